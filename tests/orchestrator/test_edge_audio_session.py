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


async def test_opus_in_and_out_with_noise_suppression_over_loopback(make_stack) -> None:
    speech, rate = read_wav(PROMPT)
    x = StreamResampler(rate, 48000).process(speech, last=True)
    rng = np.random.default_rng(3)
    x = x + 0.01 * rng.standard_normal(len(x)).astype(np.float32)  # a noisy line
    cfg = session_config(48000, OPUS, output_format=audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=24000),
                         edge_audio=agent_pb2.EdgeAudioConfig(
                             noise_suppression=True,
                             noise_suppressor=agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_SPEEX))
    async with make_stack(["what time is it"]) as stack:
        async with AgentCall(stack.stub, cfg) as call:
            await call.stream(x, 48000)  # the client sends one 20 ms Opus packet per message
            await call.silence(1.0)
            await call.wait_for(call.turn_over(1), timeout_s=20)
            rec = call.record
            assert rec.finals() == ["what time is it"]
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
