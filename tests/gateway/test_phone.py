"""The telephone path over the fake backends: media-stream events in and out, barge-in, marks, bad input."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from voxgrid.gateway.calls import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_IDLE,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
)
from voxgrid.gateway.media_client import MediaStreamCaller

from tests.gateway.conftest import ALL_CLOSED, metric, mulaw_tone, scrape, settled
from tests.orchestrator.fakes import FakeTts, echo_reply

pytestmark = pytest.mark.e2e
LONG = ("Let me tell you a long story about the history of this city, which was founded long ago, grew slowly "
        "through the centuries, and became famous for its bridges and its markets.")


def story(messages, tools):
    return LONG if "story" in messages[-1].content else echo_reply(messages, tools)


async def test_a_phone_turn_comes_back_as_mulaw_media_with_marks_and_edge_latency(make_gateway) -> None:
    async with make_gateway(["what time is it"]) as gs, MediaStreamCaller(gs.ws + "/phone") as caller:
        await caller.start()
        await caller.stream(mulaw_tone(1.0))
        await caller.silence(3.0, until=lambda: len(caller.marks_returned) >= 3)
        media = caller.of("media")
        assert media and all(e["streamSid"] == caller.stream_sid for e in media)
        assert len(caller.agent_audio()) > 8000 * 0.5  # over half a second of agent speech, 8 kHz mu-law
        marks = [e["mark"]["name"] for e in caller.of("mark")]
        assert marks and marks[0].startswith("vx:1:")
        assert caller.marks_returned  # the caller "played" them and returned them
        await caller.stop()
        await caller.wait_for(lambda c: c.closed, timeout_s=5)
        assert caller.close_code == 1000
        text = await scrape(gs.http)
        assert metric(text, "voxgrid_gateway_voice_to_voice_seconds_count", kind="phone") >= 1
        assert await settled(gs) == ALL_CLOSED
        assert metric(await scrape(gs.http), "voxgrid_gateway_active_calls", kind="phone") == 0


async def test_barge_in_sends_clear_and_no_more_audio_of_the_cut_turn(make_gateway) -> None:
    async with make_gateway(["tell me a story", "stop that please now"]) as gs:
        gs.agent.llm.reply = story
        async with MediaStreamCaller(gs.ws + "/phone") as caller:
            await caller.start()
            await caller.stream(mulaw_tone(1.0))
            await caller.silence(10, until=lambda: bool(caller.of("media")))
            await caller.silence(1.5)  # the caller listens to part of the story, marks go back
            await caller.stream(mulaw_tone(1.2))  # ... then talks over it
            await caller.silence(10, until=lambda: bool(caller.of("clear")))
            events = [e["event"] for _, e in caller.events]
            cut = events.index("clear")
            after = [e for _, e in caller.events[cut:] if e["event"] == "mark"]
            assert all(not m["mark"]["name"].startswith("vx:1:") for m in after)
            sent = sum(len(base64.b64decode(e["media"]["payload"])) for _, e in caller.events[:cut]
                       if e["event"] == "media")
            assert sent / 8 < len(LONG) * FakeTts().ms_per_char / 2  # far less than the whole story went out
            await caller.silence(5, until=lambda: len(caller.of("clear")) and "stop that" in
                                 " ".join(m.content for m in gs.agent.llm.requests[-1].messages))
            # What the caller heard (from the returned marks) is all the history keeps of the cut turn.
            history = [m.content for m in gs.agent.llm.requests[-1].messages if m.role == 3]
            assert history and LONG.startswith(history[0].rstrip(" —")) and len(history[0]) < len(LONG) / 2
            text = await scrape(gs.http)
            assert metric(text, "voxgrid_gateway_interruptions_total", kind="phone") >= 1


async def test_a_socket_dropped_mid_turn_closes_the_orchestrator_session(make_gateway) -> None:
    async with make_gateway(["tell me a story"]) as gs:
        gs.agent.llm.reply = story
        async with MediaStreamCaller(gs.ws + "/phone") as caller:
            await caller.start()
            await caller.stream(mulaw_tone(1.0))
            await caller.silence(10, until=lambda: bool(caller.of("media")))
            assert gs.agent.orchestrator.gate.active == 1
            await caller.ws.close()  # the provider's socket goes away mid-answer, no stop event
        assert await settled(gs) == ALL_CLOSED


async def closed_with(url: str, *events: object, headers: dict | None = None) -> tuple[int, str]:
    """Send raw messages, return the close code and reason the gateway answered with."""
    async with aiohttp.ClientSession() as s, s.ws_connect(url, headers=headers or {}) as ws:
        for ev in events:
            if isinstance(ev, bytes):
                await ws.send_bytes(ev)
            else:
                await ws.send_str(ev if isinstance(ev, str) else json.dumps(ev))
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return ws.close_code, str(msg.extra or "")


START = {"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1", "mediaFormat": {
    "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def media(payload: str) -> dict:
    return {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "payload": payload}}


async def test_bad_input_closes_the_socket_with_a_reason_and_neighbours_go_on(make_gateway, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("support: {systemPrompt: You are support.}\n")
    async with make_gateway(["hello there"], idle_timeout_s=0.5, max_message_bytes=4096,
                            orchestrator_kw={"profiles_file": profiles}) as gs:
        url = gs.ws + "/phone"
        async with MediaStreamCaller(url) as neighbour:  # a good call running beside the bad ones
            await neighbour.start()
            done = asyncio.Event()
            line = asyncio.create_task(neighbour.silence(60, until=done.is_set))  # its mic keeps streaming
            cases = {
                "malformed JSON": ((CLOSE_BAD_PAYLOAD, "not JSON"), ["{not json"]),
                "not an event": ((CLOSE_BAD_PAYLOAD, '"event"'), [[1, 2]]),
                "media before start": ((CLOSE_POLICY, "media before start"), [media("/w==")]),
                "wrong media format": ((CLOSE_UNSUPPORTED, "audio/x-mulaw"),
                                       [{**START, "start": {"mediaFormat": {"encoding": "audio/l16",
                                                                            "sampleRate": 16000}}}]),
                "payload not base64": ((CLOSE_BAD_PAYLOAD, "not base64"), [START, media("%%%not base64%%%")]),
                "binary frame": ((CLOSE_UNSUPPORTED, "JSON text"), [b"\x00\x01"]),
                "oversized frame": ((CLOSE_TOO_BIG, ""), [START, media("/w==" * 2000)]),
                "silent socket": ((CLOSE_IDLE, "no message for 0.5s"), [START]),
                "unknown profile": ((CLOSE_POLICY, "'sales' is unknown: use one of support"),
                                    [{**START, "start": {**START["start"], "customParameters": {"profile": "sales"}}}]),
            }
            for name, ((code, reason), events) in cases.items():
                got_code, got_reason = await closed_with(url, *events)
                assert got_code == code, (name, got_code, got_reason)
                assert reason in got_reason, (name, got_reason)
            done.set()
            await line
            await neighbour.stream(mulaw_tone(1.0))
            await neighbour.silence(5, until=lambda: bool(neighbour.of("media")))
            assert neighbour.of("media") and not neighbour.closed
        text = await scrape(gs.http)
        assert metric(text, "voxgrid_gateway_errors_total", kind="phone", cause="bad_json") >= 2
        # Every call was let go of: at the gateway, the orchestrator and each backend (sessions refused or
        # dropped while the orchestrator was still opening its stages included).
        assert not any((await settled(gs, timeout_s=5)).values())


async def test_too_many_calls_get_a_clean_close_with_a_reason(make_gateway) -> None:
    async with make_gateway(["hi"], max_sessions=1) as gs:
        async with MediaStreamCaller(gs.ws + "/phone") as first:
            await first.start()
            await first.silence(0.3)
            code, reason = await closed_with(gs.ws + "/phone", START)
            assert code == CLOSE_TRY_AGAIN and "full (1 calls)" in reason
        text = await scrape(gs.http)
        assert metric(text, "voxgrid_gateway_refused_calls_total", reason="full") >= 1


async def test_tokens_guard_the_sockets_by_header_or_query(make_gateway) -> None:
    async with make_gateway(["hi"], auth_tokens="s3cret") as gs, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(gs.ws + "/phone")
        assert err.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await s.ws_connect(gs.ws + "/ws?token=wrong")
        async with MediaStreamCaller(gs.ws + "/phone", headers={"Authorization": "Bearer s3cret"}) as caller:
            await caller.start()
            await caller.silence(0.2)
            assert not caller.closed
        async with s.ws_connect(gs.ws + "/ws?token=s3cret") as ws:
            ready = json.loads((await ws.receive(timeout=5)).data)
            assert ready["type"] == "ready"
        async with s.get(gs.http + "/") as page:  # the page itself is public; the socket needs the token
            assert page.status == 200
