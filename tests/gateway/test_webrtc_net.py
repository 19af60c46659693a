"""WebRTC on a cluster, on loopback: the UDP port range, the advertised (1:1 NAT) address, a STUN server, and
the settings that configure them refused with a message that names the setting.

Everything binds 127.0.0.x: the "public" address is 127.0.0.2, the STUN server a few lines of aioice's own
STUN message code on 127.0.0.1, and the 1:1 NAT a UDP forwarder that owns 127.0.0.2:<port range>. The talk
page gets its own STUN/TURN list from GET /webrtc/ice-servers; headless Chromium shows it reaches the
browser's RTCPeerConnection (the browser asks the STUN server) without breaking a loopback call.

Short-lived TURN credentials (webrtc_turn_shared_secret_file, coturn's use-auth-secret) are checked three
ways: against a fixed vector, by a TURN server written here from the scheme's description (401 challenge,
HMAC-derived password, long-term-credential MESSAGE-INTEGRITY), and by a real coturn where it is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from voxgrid.gateway.app import GatewayServer, Settings, start_gateway
from voxgrid.gateway.ice_servers import IceServers, parse_urls, rest_api_credential
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


# -- Short-lived TURN credentials (TURN REST API, coturn use-auth-secret) ----------------------------------

def expected_credential(secret: str, username: str) -> str:
    """The TURN server's side of the scheme, written out here rather than imported from the gateway."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_the_rest_api_credential_matches_a_known_vector() -> None:
    username, credential = rest_api_credential("north-wind-secret", "browser-0123456789ab", 1700000000)
    assert username == "1700000000:browser-0123456789ab"
    # Computed once outside Python: printf %s "$username" | openssl dgst -sha1 -hmac north-wind-secret -binary | base64
    assert credential == "qqNDMmouevaQskNzdNIl2h7p2TU="
    assert credential == expected_credential("north-wind-secret", username)


def test_a_shared_secret_mints_a_fresh_credential_per_use_that_expires_after_the_ttl(tmp_path: Path) -> None:
    secret = tmp_path / "shared-secret"
    secret.write_text("north-wind-secret\n")
    now = 1_800_000_000.0
    servers = IceServers("stun:127.0.0.1:3478,turn:127.0.0.1:3478?transport=udp", "eu1",
                         client_urls="turn:t.example.com?transport=udp,turns:t.example.com",
                         turn_shared_secret_file=secret, turn_credential_ttl_s=900, clock=lambda: now)
    assert servers.ephemeral
    page = servers.for_browser()
    assert page[0]["username"] == page[1]["username"]  # one reply, one TURN user on every URL
    expiry, user_id = page[0]["username"].split(":")
    assert int(expiry) == now + 900 and re.fullmatch(r"eu1-browser-[0-9a-f]{12}", user_id), user_id
    assert page[0]["credential"] == expected_credential("north-wind-secret", page[0]["username"])
    assert servers.for_browser()[0]["username"] != page[0]["username"]  # a new random id per reply
    turn = next(s for s in servers.configuration().iceServers if s.urls.startswith("turn"))
    assert re.fullmatch(rf"{int(now) + 900}:eu1-gateway-[0-9a-f]{{12}}", turn.username), turn.username
    assert turn.credential == expected_credential("north-wind-secret", turn.username)


def test_shared_secret_settings_are_refused_with_messages_that_name_them(tmp_path: Path) -> None:
    secret = tmp_path / "shared-secret"
    secret.write_text("s\n")
    turn = "turn:127.0.0.1:3478"
    for static in ({"turn_credential": "pw"}, {"turn_credential_file": secret}):
        with pytest.raises(ValueError, match=r"webrtc_turn_shared_secret_file and webrtc_turn_credential(_file)? "
                                             r"are both set"):
            IceServers(turn, "agent", turn_shared_secret_file=secret, **static)
    with pytest.raises(ValueError, match="webrtc_turn_shared_secret_file: cannot use"):
        IceServers(turn, turn_shared_secret_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"webrtc_turn_shared_secret_file: .* is empty"):
        IceServers(turn, turn_shared_secret_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="webrtc_turn_username 'a:b' contains ':'"):
        IceServers(turn, "a:b", turn_shared_secret_file=secret)
    with pytest.raises(ValueError, match="webrtc_turn_credential_ttl_s"):
        Settings(port=0, webrtc_turn_credential_ttl_s=10)
    with pytest.raises(ValueError, match="webrtc_turn_shared_secret_file and webrtc_turn_credential_file"):
        GatewayServer(Settings(port=0, webrtc_ice_servers=turn, webrtc_turn_credential_file=secret,
                               webrtc_turn_shared_secret_file=secret))


async def test_each_ice_servers_reply_gets_its_own_short_lived_credential_and_sees_a_rotation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "shared-secret"
    secret.write_text("rotating-secret-one\n")
    turn = "turn:127.0.0.1:3478?transport=udp"
    settings = Settings(port=0, orchestrator_backends="static:127.0.0.1:9", auth_tokens="tok",
                        webrtc_ice_servers=turn, webrtc_turn_shared_secret_file=secret,
                        webrtc_turn_credential_ttl_s=600)
    caplog.set_level(logging.DEBUG)
    async with start_gateway(settings) as gw, aiohttp.ClientSession() as http:
        url = gw.url + "/webrtc/ice-servers"
        async with http.get(url) as r:
            assert r.status == 401

        async def login() -> dict[str, str]:
            async with http.get(url, headers={"Authorization": "Bearer tok"}) as r:
                assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
                (entry,) = (await r.json())["iceServers"]
                return entry

        before = time.time()
        first = await login()
        expiry = int(first["username"].split(":")[0])
        assert before + 600 - 1 <= expiry <= time.time() + 600, (before, expiry)
        assert first["credential"] == expected_credential("rotating-secret-one", first["username"])
        secret.write_text("rotating-secret-two\n")  # the Secret rotated: the next reply is signed with it
        os.utime(secret, (1, 1))
        second = await login()
        assert second["credential"] == expected_credential("rotating-secret-two", second["username"])
        secret.write_text("")  # a Secret being swapped: the last good secret keeps signing
        os.utime(secret, (2, 2))
        third = await login()
        assert third["credential"] == expected_credential("rotating-secret-two", third["username"])
    assert "unusable" in caplog.text and "rotating-secret" not in caplog.text


class RestApiTurnServer(asyncio.DatagramProtocol):
    """The TURN server's half of use-auth-secret, as coturn does it: challenge with 401 + REALM + NONCE, then
    take the username's expiry, recompute the password as base64(HMAC-SHA1(secret, username)) and check the
    request's MESSAGE-INTEGRITY with the long-term key MD5(username:realm:password). A good Allocate gets a
    relayed address (so the gateway's answer carries a relay candidate); a bad one 441."""

    REALM = "voxgrid.test"

    def __init__(self, secret: str, relayed: tuple[str, int]) -> None:
        self.secret, self.relayed = secret, relayed
        self.transport: Any = None
        self.accepted: list[str] = []
        self.refused: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from aioice import stun

        request = stun.parse_message(data)
        if request.message_class != stun.Class.REQUEST:
            return
        reply = stun.Message(message_method=request.message_method, message_class=stun.Class.RESPONSE,
                             transaction_id=request.transaction_id)
        username = request.attributes.get("USERNAME")
        if username is None:
            reply.message_class = stun.Class.ERROR
            reply.attributes.update({"ERROR-CODE": (401, "Unauthorized"), "REALM": self.REALM, "NONCE": b"n0nce"})
            self.transport.sendto(bytes(reply), addr)
            return
        password = expected_credential(self.secret, username)
        key = hashlib.md5(f"{username}:{self.REALM}:{password}".encode()).digest()
        if int(username.split(":")[0]) < time.time() or not request.check_message_integrity(key):
            self.refused.append(username)
            reply.message_class = stun.Class.ERROR
            reply.attributes["ERROR-CODE"] = (441, "Wrong Credentials")
            self.transport.sendto(bytes(reply), addr)
            return
        self.accepted.append(username)
        reply.attributes["LIFETIME"] = request.attributes.get("LIFETIME", 600)
        if request.message_method == stun.Method.ALLOCATE:
            reply.attributes["XOR-MAPPED-ADDRESS"] = addr
            reply.attributes["XOR-RELAYED-ADDRESS"] = self.relayed
        reply.add_message_integrity(key)
        self.transport.sendto(bytes(reply), addr)


async def test_the_gateway_s_own_peer_authenticates_to_the_turn_server_with_a_minted_credential(
        make_gateway, tmp_path: Path) -> None:
    secret = tmp_path / "shared-secret"
    secret.write_text("relay-secret\n")
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: RestApiTurnServer("relay-secret", ("127.0.0.5", 49999)), local_addr=("127.0.0.1", 0))
    turn = f"turn:127.0.0.1:{transport.get_extra_info('sockname')[1]}?transport=udp"
    try:
        async with make_gateway(["hi"], webrtc_ice_addresses="127.0.0.1", webrtc_ice_servers=turn,
                                webrtc_turn_username="gw", webrtc_turn_shared_secret_file=secret) as gs:
            for signed_with in ("relay-secret", "relay-secret-2"):
                if signed_with != "relay-secret":  # rotate both sides: the next peer signs with the new one
                    secret.write_text(f"{signed_with}\n")
                    os.utime(secret, (1, 1))
                    server.secret = signed_with
                caller = WebRTCCaller(gs.http)
                try:
                    status, answer = await caller.post(await caller.offer())
                    assert status == 201, answer
                finally:
                    await caller.close()
                assert ("127.0.0.5", 49999, "relay") in candidates(answer), answer
            assert len({u.split(":")[1] for u in server.accepted}) == 2 and not server.refused
            assert all(re.fullmatch(r"\d+:gw-gateway-[0-9a-f]{12}", u) for u in server.accepted), server.accepted
            server.secret = "not-the-gateway-s"  # the servers disagree: the relay is refused, the call still answers
            caller = WebRTCCaller(gs.http)
            try:
                status, answer = await caller.post(await caller.offer())
                assert status == 201 and "typ relay" not in answer, answer
            finally:
                await caller.close()
            assert server.refused
            assert await settled(gs) == ALL_CLOSED
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def coturn(secret: str, tmp_path: Path) -> AsyncIterator[int]:
    """A real coturn (Debian's `turnserver`) on 127.0.0.1 with use-auth-secret, relaying on loopback; yields
    its port. Skips where coturn is not installed (apt-get install coturn)."""
    import shutil

    from aioice import stun

    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn is not installed (apt-get install coturn): the TURN REST API check against it is off")
    port, _ = port_range(1)
    relay_low, relay_high = port_range(10)
    log_file = (tmp_path / "coturn.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(port), "--relay-ip", "127.0.0.1",
        "--min-port", str(relay_low), "--max-port", str(relay_high), "--use-auth-secret",
        "--static-auth-secret", secret, "--realm", "voxgrid.test", "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
        "--allow-loopback-peers", "--log-file", "stdout", "--simple-log", "--pidfile", str(tmp_path / "coturn.pid"),
        "--userdb", str(tmp_path / "coturn.db"), stdout=log_file, stderr=asyncio.subprocess.STDOUT)
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: Any) -> None:
            if not answered.done():
                answered.set_result(data)

    probe, _ = await loop.create_datagram_endpoint(Probe, remote_addr=("127.0.0.1", port))
    try:
        for _ in range(100):  # up when it answers a STUN binding request
            probe.sendto(bytes(stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(answered), 0.1)
                break
            assert proc.returncode is None, (tmp_path / "coturn.log").read_text()
        assert answered.done(), "coturn never answered: " + (tmp_path / "coturn.log").read_text()[-2000:]
        yield port
    finally:
        probe.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        log_file.close()


async def allocates(port: int, username: str, credential: str) -> bool:
    """Whether the TURN server at 127.0.0.1:port gives this user a relay (aioice's TURN client, as a browser)."""
    from aioice import stun, turn

    try:
        transport, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, server_addr=("127.0.0.1", port),
                                                       username=username, password=credential)
    except stun.TransactionFailed:
        return False
    transport.close()
    return True


async def test_coturn_relays_for_the_minted_credentials_and_refuses_expired_or_foreign_ones(
        make_gateway, tmp_path: Path) -> None:
    secret = tmp_path / "shared-secret"
    secret.write_text("coturn-static-auth-secret\n")
    async with coturn("coturn-static-auth-secret", tmp_path) as port:
        turn = f"turn:127.0.0.1:{port}?transport=udp"
        async with make_gateway(["hi"], webrtc_ice_addresses="127.0.0.1", webrtc_ice_servers=turn,
                                webrtc_turn_shared_secret_file=secret, webrtc_turn_credential_ttl_s=120) as gs, \
                aiohttp.ClientSession() as http:
            async with http.get(gs.http + "/webrtc/ice-servers") as r:
                (browser,) = (await r.json())["iceServers"]
            assert await allocates(port, browser["username"], browser["credential"])  # the page's pair
            caller = WebRTCCaller(gs.http)
            try:
                status, answer = await caller.post(await caller.offer())
                assert status == 201 and "typ relay" in answer, answer  # the gateway's own peer got a relay
            finally:
                await caller.close()
            assert not await allocates(port, *rest_api_credential("coturn-static-auth-secret", "late",
                                                                   int(time.time()) - 5))  # expired
            secret.write_text("a-secret-coturn-does-not-have\n")
            os.utime(secret, (1, 1))
            async with http.get(gs.http + "/webrtc/ice-servers") as r:
                (foreign,) = (await r.json())["iceServers"]
            assert not await allocates(port, foreign["username"], foreign["credential"])
            assert await settled(gs) == ALL_CLOSED
