"""WebRTC on a cluster, on loopback: the UDP port range, the advertised (1:1 NAT) address, a STUN server, and
the settings that configure them refused with a message that names the setting.

Everything binds 127.0.0.x: the "public" address is 127.0.0.2, the STUN server a few lines of aioice's own
STUN message code on 127.0.0.1, and the 1:1 NAT a UDP forwarder that owns 127.0.0.2:<port range>. The talk
page gets its own STUN/TURN list from GET /webrtc/ice-servers; headless Chromium shows it reaches the
browser's RTCPeerConnection (the browser asks the STUN server) without breaking a loopback call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from voxgrid.gateway.app import GatewayServer, Settings, start_gateway
from voxgrid.gateway.ice_servers import IceServers, parse_urls
from voxgrid.gateway.rtc_net import IcePolicy, advertise, parse_port_range, parse_public_ip
from voxgrid.gateway.webrtc_client import WebRTCCaller

from tests.gateway.conftest import ALL_CLOSED, chromium_path, metric, scrape, settled

pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'voxgrid[gateway]')")
PUBLIC = "127.0.0.2"


def port_range(size: int) -> tuple[int, int]:
    """A range unlikely to be used by anything else on the machine (other test runs pick their own)."""
    low = random.randrange(41000, 59000 - size)
    return low, low + size - 1


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every a=candidate line."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            f = line.split()
            out.append((f[4], int(f[5]), f[7]))
    return out


def rtc(low: int, high: int, **extra: Any) -> dict[str, Any]:
    return {"webrtc_ice_addresses": "127.0.0.1", "webrtc_udp_port_min": low, "webrtc_udp_port_max": high,
            "max_sessions": high - low + 1, **extra}


async def test_media_ports_stay_inside_the_range_and_the_call_connects(make_gateway) -> None:
    low, high = port_range(20)
    async with make_gateway(["hi"], **rtc(low, high)) as gs:
        async with WebRTCCaller(gs.http) as caller:
            found = candidates(caller.answer)
            assert found and all(a == "127.0.0.1" and low <= p <= high and t == "host" for a, p, t in found), found
            assert await caller.wait(lambda c: bool(c.of("ready")), 15), caller.events  # ICE + DTLS connected
        assert await settled(gs) == ALL_CLOSED


async def test_a_full_port_range_refuses_the_next_offer_with_503(make_gateway) -> None:
    low, _ = port_range(1)
    async with make_gateway(["hi"], **{**rtc(low, low), "max_sessions": 2}) as gs:  # ports run out first
        first, second = WebRTCCaller(gs.http), WebRTCCaller(gs.http)
        try:
            status, answer = await first.post(await first.offer())
            assert status == 201 and {p for _, p, _ in candidates(answer)} == {low}  # one per m= section
            status, text = await second.post(await second.offer())
            assert status == 503 and "webrtc_udp_port_min/max" in text, text
            assert metric(await scrape(gs.http), "voxgrid_gateway_errors_total", kind="webrtc", cause="no_port") >= 1
        finally:
            await second.close()
            await first.close()  # DELETE: the port is freed
        assert await settled(gs) == ALL_CLOSED


class Nat1to1(asyncio.DatagramProtocol):
    """A 1:1 NAT in user space: public PUBLIC:port forwards to 127.0.0.1:port (the same port), one inside
    socket per outside peer, so the gateway answers through it and the caller sees the public address."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.inside: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.packets = 0
        self._opening: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        if addr not in self.inside:
            task = asyncio.ensure_future(self._open(data, addr))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        else:
            self.inside[addr].sendto(data)

    async def _open(self, data: bytes, peer: tuple[str, int]) -> None:
        outer = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr: tuple[str, int]) -> None:
                assert outer.transport is not None
                outer.transport.sendto(reply, peer)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0),
                                                           remote_addr=("127.0.0.1", self.port))
        self.inside[peer] = transport
        transport.sendto(data)

    def close(self) -> None:
        for t in self.inside.values():
            t.close()
        if self.transport is not None:
            self.transport.close()


@contextlib.asynccontextmanager
async def nat(low: int, high: int) -> AsyncIterator[list[Nat1to1]]:
    loop = asyncio.get_running_loop()
    nats = []
    try:
        for port in range(low, high + 1):
            _, proto = await loop.create_datagram_endpoint(lambda p=port: Nat1to1(p), local_addr=(PUBLIC, port))
            nats.append(proto)
        yield nats
    finally:
        for n in nats:
            n.close()


async def test_the_advertised_address_replaces_the_host_candidates_and_works_through_a_nat(make_gateway) -> None:
    low, high = port_range(4)
    async with make_gateway(["hi"], **rtc(low, high, webrtc_public_ip=PUBLIC)) as gs, nat(low, high) as nats:
        async with WebRTCCaller(gs.http, ice_addresses=("127.0.0.1",)) as caller:
            found = candidates(caller.answer)
            assert found and all(a == PUBLIC and low <= p <= high for a, p, _ in found), found
            assert "127.0.0.1" not in "\n".join(x for x in caller.answer.splitlines() if x.startswith(("a=cand", "c=")))
            assert await caller.wait(lambda c: bool(c.of("ready")), 15), caller.events
        assert sum(n.packets for n in nats) > 0, "the caller reached the gateway through the advertised address"
        assert await settled(gs) == ALL_CLOSED


class StunServer(asyncio.DatagramProtocol):
    """Answers STUN binding requests (aioice's message code) with a fixed mapped address; records who asked."""

    def __init__(self, mapped_host: str) -> None:
        self.mapped_host = mapped_host
        self.transport: Any = None
        self.asked_from: list[tuple[str, int]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from aioice import stun

        request = stun.parse_message(data)
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            return
        self.asked_from.append(addr)
        response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = (self.mapped_host, addr[1])
        self.transport.sendto(bytes(response), addr)


async def test_a_stun_server_gives_a_server_reflexive_candidate_from_a_port_in_range(make_gateway) -> None:
    low, high = port_range(10)
    loop = asyncio.get_running_loop()
    transport, stun_server = await loop.create_datagram_endpoint(lambda: StunServer("127.0.0.3"),
                                                                  local_addr=("127.0.0.1", 0))
    stun_port = transport.get_extra_info("sockname")[1]
    try:
        async with make_gateway(["hi"], **rtc(low, high, webrtc_ice_servers=f"stun:127.0.0.1:{stun_port}")) as gs:
            caller = WebRTCCaller(gs.http)
            try:
                status, answer = await caller.post(await caller.offer())
                assert status == 201, answer
            finally:
                await caller.close()
            assert stun_server.asked_from and all(low <= p <= high for _, p in stun_server.asked_from)
            srflx = {c for c in candidates(answer) if c[2] == "srflx"}
            assert srflx == {("127.0.0.3", stun_server.asked_from[0][1], "srflx")}, answer
            assert re.search(rf"typ srflx raddr 127\.0\.0\.1 rport {stun_server.asked_from[0][1]}", answer)
            assert await settled(gs) == ALL_CLOSED
    finally:
        transport.close()


def test_settings_are_checked_with_messages_that_name_them(tmp_path: Path) -> None:
    assert parse_port_range(0, 0) is None and parse_port_range(40000, 40099) == (40000, 40099)
    for low, high, words in ((40100, 40000, "reversed"), (40000, 0, "set both"), (80, 90, "between 1024")):
        with pytest.raises(ValueError, match=words):
            parse_port_range(low, high)
    with pytest.raises(ValueError, match=r"webrtc_public_ip.*not an IP address"):
        parse_public_ip("voice.example.com")
    with pytest.raises(ValueError, match="cannot be advertised"):
        parse_public_ip("0.0.0.0")
    assert IcePolicy.from_settings("lo", 0, 0, "").addresses[0] == "127.0.0.1"  # an interface name
    with pytest.raises(ValueError, match="not an IP address nor an interface"):
        IcePolicy.from_settings("nosuchif0", 0, 0, "")

    assert parse_urls(" stun:stun.example.com:3478 , turns:turn.example.com ") == (
        "stun:stun.example.com:3478", "turns:turn.example.com")
    for bad, words in (("http://x", "not a stun:"), ("stun:a,stun:b", "one STUN server"),
                       ("turn:t?transport=sctp", "malformed|udp or tcp"), ("turns:t?transport=udp", "tcp only")):
        with pytest.raises(ValueError, match=words):
            parse_urls(bad)
    with pytest.raises(ValueError, match="webrtc_turn_username"):
        IceServers("turn:turn.example.com:3478")
    with pytest.raises(ValueError, match="no credential"):
        IceServers("turn:turn.example.com:3478", "agent")
    with pytest.raises(ValueError, match="cannot use"):
        IceServers("turn:turn.example.com:3478", "agent", turn_credential_file=tmp_path / "missing")
    with pytest.raises(ValueError, match="webrtc_udp_port_min=40000 and webrtc_udp_port_max=0"):
        GatewayServer(Settings(port=0, webrtc_udp_port_min=40000))  # `voxgrid serve gateway` logs it, exits 1


def test_the_turn_credential_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    secret = tmp_path / "credential"
    secret.write_text("first\n")
    servers = IceServers("stun:127.0.0.1:3478,turn:127.0.0.1:3478?transport=udp", "agent",
                         turn_credential_file=secret)
    turn = next(s for s in servers.configuration().iceServers if s.urls.startswith("turn"))
    assert (turn.username, turn.credential) == ("agent", "first")
    secret.write_text("second\n")
    os.utime(secret, (1, 1))  # a different mtime even on coarse clocks
    assert servers.credential() == "second"
    secret.write_text("")  # a Secret being swapped: the last good credential stays
    os.utime(secret, (2, 2))
    assert servers.credential() == "second"


def test_advertise_rewrites_host_candidates_and_connection_lines_only() -> None:
    sdp = ("v=0\r\nc=IN IP4 10.1.2.3\r\nm=audio 40001 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 10.1.2.3\r\n"
           "a=candidate:1 1 udp 2130706431 10.1.2.3 40001 typ host\r\n"
           "a=candidate:2 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 10.1.2.3 rport 40001\r\n"
           "a=candidate:3 1 udp 2130706431 fd00::5 40002 typ host\r\n")
    out = advertise(sdp, "198.51.100.7")
    assert "198.51.100.7 40001 typ host" in out and "c=IN IP4 198.51.100.7" in out and "10.1.2.3 40001 typ" not in out
    assert "203.0.113.9 40001 typ srflx" in out and "fd00::5 40002 typ host" in out  # other types, families kept
    assert advertise(sdp, "") == sdp


async def test_the_page_gets_its_ice_servers_with_auth_and_the_current_turn_credential(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "credential"
    secret.write_text("s3cret-one\n")
    turn = "turn:127.0.0.1:3478?transport=udp"
    settings = Settings(port=0, orchestrator_backends="static:127.0.0.1:9", auth_tokens="tok",
                        webrtc_ice_servers=f"stun:127.0.0.1:3478,{turn}", webrtc_turn_username="agent",
                        webrtc_turn_credential_file=secret)
    caplog.set_level(logging.DEBUG)
    async with start_gateway(settings) as gw, aiohttp.ClientSession() as http:
        url = gw.url + "/webrtc/ice-servers"
        for headers, query in (({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?token=nope")):
            async with http.get(url + query, headers=headers) as r:
                assert r.status == 401 and "token" in await r.text()

        async def servers(auth: dict[str, str], query: str = "") -> list[dict[str, str]]:
            async with http.get(url + query, headers=auth) as r:
                assert r.status == 200 and r.headers["Cache-Control"] == "no-store", await r.text()
                return (await r.json())["iceServers"]

        bearer = {"Authorization": "Bearer tok"}
        assert await servers(bearer) == [
            {"urls": "stun:127.0.0.1:3478"}, {"urls": turn, "username": "agent", "credential": "s3cret-one"}]
        secret.write_text("s3cret-two\n")  # the Secret rotated: the next page gets the new one, no restart
        os.utime(secret, (1, 1))
        assert (await servers({}, "?token=tok"))[1]["credential"] == "s3cret-two"
    assert "s3cret" not in caplog.text

    # A client list replaces the gateway's (any number of servers: browsers take them all); no auth set.
    secret.write_text("s3cret-three\n")
    client = "stun:stun1.example.com:3478,stun:stun2.example.com,turns:turn.example.com:5349"
    open_settings = settings.model_copy(update={"auth_tokens": "", "webrtc_client_ice_servers": client})
    async with start_gateway(open_settings) as gw, aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/webrtc/ice-servers") as r:
            assert r.status == 200
            assert (await r.json())["iceServers"] == [
                {"urls": "stun:stun1.example.com:3478"}, {"urls": "stun:stun2.example.com"},
                {"urls": "turns:turn.example.com:5349", "username": "agent", "credential": "s3cret-three"}]
    with pytest.raises(ValueError, match="webrtc_client_ice_servers: 'http://x'"):
        IceServers("", client_urls="stun:a,http://x")
    with pytest.raises(ValueError, match="webrtc_client_ice_servers has a TURN server but webrtc_turn_username"):
        IceServers("stun:127.0.0.1:3478", client_urls="turn:turn.example.com")


class SilentUdp(asyncio.DatagramProtocol):
    """An ICE server that never answers (a firewalled or wrong STUN address)."""


async def test_the_browser_page_uses_the_gateway_s_ice_servers_and_still_connects_on_loopback(
        make_gateway) -> None:
    chromium = chromium_path()
    from playwright.async_api import async_playwright

    loop = asyncio.get_running_loop()
    live, stun_server = await loop.create_datagram_endpoint(lambda: StunServer("127.0.0.3"),
                                                             local_addr=("127.0.0.1", 0))
    dead, _ = await loop.create_datagram_endpoint(SilentUdp, local_addr=("127.0.0.1", 0))
    urls = [f"stun:127.0.0.1:{t.get_extra_info('sockname')[1]}" for t in (live, dead)]
    try:
        # The client list only: the gateway's own peers gather host candidates on loopback, as before.
        async with make_gateway(["hi"], webrtc_ice_addresses="127.0.0.1",
                                webrtc_client_ice_servers=",".join(urls)) as gs, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                "--allow-loopback-in-peer-connection"])
            try:
                page = await browser.new_page()
                await page.goto(gs.http + "/?transport=webrtc")
                await page.click("#start")
                await page.wait_for_function("document.getElementById('status').textContent === 'connected'",
                                             timeout=30000)
                fetched = await page.evaluate("window.voxgrid.iceServerUrls")
                await page.click("#hangup")  # the page's own hang-up (end + DELETE) frees the call
                assert await settled(gs) == ALL_CLOSED
            finally:
                await browser.close()
            assert fetched == urls
            assert stun_server.asked_from, "the browser's peer connection never asked the STUN server it was given"
    finally:
        live.close()
        dead.close()
