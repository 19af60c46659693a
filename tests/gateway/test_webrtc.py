"""WebRTC ingress over loopback: a real aiortc peer against the gateway (deterministic fake backends behind it).

The gateway gathers ICE on 127.0.0.1 through its own setting (webrtc_ice_addresses), the client through the
same helper, so nothing here touches the machine's network address.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import numpy as np
import pytest
from voxgrid.gateway.rtc_net import OfferError, check_offer, keep_reachable_candidates, parse_addresses
from voxgrid.gateway.webrtc import FRAME, RATE, AgentTrack
from voxgrid.gateway.webrtc_client import WebRTCCaller

from tests.gateway.conftest import ALL_CLOSED, metric, scrape, settled
from tests.orchestrator.conftest import RATE as TONE_RATE
from tests.orchestrator.conftest import tone

pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'voxgrid[gateway]')")
pytestmark = pytest.mark.e2e
LOOPBACK = {"webrtc_ice_addresses": "127.0.0.1"}


async def test_a_webrtc_call_hears_answers_reports_and_can_be_interrupted(make_gateway) -> None:
    async with make_gateway(["tell me a story"], **LOOPBACK) as gs:
        gs.agent.llm.reply = lambda m, t: "A long story begins here, and it goes on, and on, and on, for a while."
        async with WebRTCCaller(gs.http) as caller:
            assert await caller.wait(lambda c: bool(c.of("ready")), 15), caller.events
            ready = caller.of("ready")[0]
            assert ready["transport"] == "webrtc" and ready["sample_rate"] == 48000
            assert metric(await scrape(gs.http), "voxgrid_gateway_active_calls", kind="webrtc") == 1
            await caller.say(np.concatenate([tone(1.0), np.zeros(TONE_RATE // 2, np.float32)]), TONE_RATE)
            assert await caller.wait(lambda c: any(e["final"] for e in c.of("transcript")) and
                                     len(c.frames) > 10, 20), caller.events
            assert any(e["final"] and e["text"] == "tell me a story" for e in caller.of("transcript"))
            assert await caller.wait(lambda c: bool(c.of("latency")), 20)
            assert caller.of("latency")[0]["edge_voice_to_voice_ms"] > 0
            await asyncio.sleep(0.3)  # some of the reply has been sent: the track's marks say how much
            caller.send({"type": "interrupt"})
            assert await caller.wait(lambda c: any(e["kind"] == "interrupted" for e in c.of("event")), 10)
            cut = next(e for e in caller.of("event") if e["kind"] == "interrupted")
            story = gs.agent.llm.reply(None, None)
            assert cut["turn_id"] == 1 and 0 < len(cut["heard_text"]) < len(story), cut
        assert await settled(gs) == ALL_CLOSED


async def test_offers_the_gateway_cannot_take_get_a_4xx_and_no_call(make_gateway) -> None:
    async with make_gateway(["hi"], **LOOPBACK) as gs:
        before = await scrape(gs.http)
        caller = WebRTCCaller(gs.http)
        try:
            offer = await caller.offer()
            status, text = await caller.post(re.sub(r"m=audio [^\r\n]*\r\n(?:(?!m=)[^\r\n]*\r\n)*", "", offer))
            assert status == 400 and "no audio section" in text
            pcmu_only = re.sub(r"a=rtpmap:\d+ opus/48000/2", "a=rtpmap:96 PCMU/8000", offer)
            status, text = await caller.post(pcmu_only)
            assert status == 415 and "do not include Opus" in text
            status, text = await caller.post("hello")
            assert status == 400 and "not an SDP offer" in text
        finally:
            await caller.close()
        text = await scrape(gs.http)
        def grew(name: str, **labels: str) -> float:  # the metrics registry is per process: compare
            return metric(text, name, **labels) - metric(before, name, **labels)

        assert grew("voxgrid_gateway_calls_total", kind="webrtc") == 0
        assert grew("voxgrid_gateway_errors_total", kind="webrtc", cause="bad_offer") == 3


async def test_ice_that_never_connects_times_out_and_frees_the_call(make_gateway) -> None:
    async with make_gateway(["hi"], webrtc_connect_timeout_s=1.0, **LOOPBACK) as gs:
        caller = WebRTCCaller(gs.http)
        before = metric(await scrape(gs.http), "voxgrid_gateway_errors_total", kind="webrtc", cause="ice_timeout")
        status, _ = await caller.post(await caller.offer())
        assert status == 201
        caller.location = ""  # no DELETE either: the gateway must notice on its own
        await caller.close()  # the answer is never applied: no connectivity check is ever answered
        await asyncio.sleep(0.1)
        assert gs.gateway.ctx.gate.active == 1  # admitted while ICE runs
        assert await settled(gs) == ALL_CLOSED
        assert not gs.gateway.rtc_calls
        text = await scrape(gs.http)
        assert metric(text, "voxgrid_gateway_errors_total", kind="webrtc", cause="ice_timeout") == before + 1


def test_offer_checks_and_loopback_candidate_filter() -> None:
    with pytest.raises(OfferError) as err:
        check_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n")
    assert err.value.status == 400 and "recvonly" in str(err.value)
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
           "a=candidate:1 1 udp 1 10.1.2.3 5000 typ host\r\na=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\n"
           "a=candidate:3 1 udp 1 abcd.local 5002 typ host\r\n")
    assert check_offer(sdp).codecs == ("opus/48000/2",)
    kept = keep_reachable_candidates(sdp, parse_addresses("127.0.0.1"))
    assert "127.0.0.1 5001" in kept and "10.1.2.3" not in kept and ".local" not in kept
    assert keep_reachable_candidates(sdp, parse_addresses("10.0.0.5")) == sdp  # a public gateway keeps them all
    with pytest.raises(ValueError, match="not an IP address"):
        parse_addresses("localhost")


async def test_the_agent_track_marks_what_it_has_sent() -> None:
    marks: list[tuple[int, int]] = []
    track = AgentTrack(lambda turn, ms: marks.append((turn, ms)))
    track.push(3, 0, np.full(RATE // 4, 1000, np.int16).tobytes())  # 250 ms of turn 3
    frames = [await track.next_frame() for _ in range(15)]
    assert all(len(f) == FRAME for f in frames)
    assert sum(int((f != 0).sum()) for f in frames) == RATE // 4  # the audio, then silence
    assert marks[-1] == (3, 250) and all(b[1] > a[1] for a, b in itertools.pairwise(marks))
    track.push(4, 0, np.ones(RATE, np.int16).tobytes())
    await track.next_frame()
    track.flush()  # barge-in: nothing more of turn 4 goes out
    assert not (await track.next_frame()).any() and marks[-1] == (4, 20)
