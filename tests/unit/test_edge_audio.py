"""Noise suppressors behind one interface and Opus in the audio layer, on real recorded speech."""

from __future__ import annotations

import numpy as np
import pytest

from voxgrid.audio import OPUS, AudioFormatError, AudioIn, AudioOut, AudioSpec, read_wav
from voxgrid.noise import DEFAULT_ENGINE, ENGINES, NoiseStage, create_engine
from voxgrid.opus import OpusEncoder, packet_duration_ms
from voxgrid.v1 import audio_pb2

PROMPT = "/usr/share/asterisk/sounds/en/all-circuits-busy-now.wav"


@pytest.fixture(scope="module")
def speech_8k() -> np.ndarray:
    x, rate = read_wav(PROMPT)
    assert rate == 8000
    return x


def best_corr(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Highest normalised correlation of b against a over lags 0..max_lag (codec/resampler delay)."""
    best, at = -1.0, 0
    for lag in range(max_lag + 1):
        n = min(len(a), len(b) - lag)
        c = float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1])
        if c > best:
            best, at = c, lag
    return best, at


def stream(stage: NoiseStage, x: np.ndarray, chunk: int) -> np.ndarray:
    out = [stage.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return np.concatenate([*out, stage.flush()])


@pytest.mark.parametrize("engine", ["speex", "webrtc", "rnnoise", "dfn"])
@pytest.mark.parametrize("rate", [8000, 24000])
def test_each_engine_streams_any_rate_keeps_speech_and_cuts_white_noise(speech_8k, engine, rate) -> None:
    from voxgrid.audio import StreamResampler

    clean = StreamResampler(8000, rate).process(speech_8k, last=True)
    rng = np.random.default_rng(7)
    # 1.5 s of noise alone first: speex needs about half a second to learn the noise floor.
    lead = np.zeros(rate * 3 // 2, np.float32)
    clean = np.concatenate([lead, clean])
    noise = 0.02 * rng.standard_normal(len(clean)).astype(np.float32)
    stage = NoiseStage(rate, engine)
    # Odd chunk sizes: the stage frames and resamples across boundaries itself.
    y = stream(stage, clean + noise, chunk=rate * 23 // 1000)
    assert abs(len(y) - len(clean)) <= rate // 100 + 2  # streaming keeps the length (within one frame)
    assert stage.frames_processed > 0 and stage.compute_s > 0
    corr, lag = best_corr(clean, y, rate // 50)
    assert corr > 0.8, f"{engine} at {rate} Hz: speech correlation {corr:.2f}"
    # The noise-only lead after adaptation (1.0-1.4 s) gets quieter: at least 6 dB for every engine.
    a, b = rate + lag, rate * 14 // 10 + lag
    reduction_db = 10 * np.log10(np.mean(noise[a:b] ** 2) / max(np.mean(y[a:b] ** 2), 1e-12))
    assert reduction_db > 6, f"{engine} at {rate} Hz removed only {reduction_db:.1f} dB of white noise"


def test_engine_choice_default_and_unknown() -> None:
    assert create_engine("").name == DEFAULT_ENGINE
    assert set(ENGINES) >= {"speex", "webrtc", "rnnoise"}
    with pytest.raises(ValueError, match="unknown: use one of speex"):
        create_engine("krisp")
    assert create_engine("webrtc").rate == 16000 and create_engine("speex", 8000).rate == 8000


def test_cost_per_frame_lands_in_the_metrics_histogram(speech_8k) -> None:
    from prometheus_client import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("voxgrid_edge_noise_suppression_frame_seconds_count",
                                         {"engine": "speex"}) or 0.0

    before = count()
    stage = NoiseStage(8000, "speex")
    stream(stage, speech_8k[:8000], 160)
    assert count() - before == stage.frames_processed >= 100


def test_opus_packets_round_trip_speech_one_packet_per_message(speech_8k) -> None:
    from voxgrid.audio import StreamResampler

    x = StreamResampler(8000, 16000).process(speech_8k, last=True)
    spec = AudioSpec.from_proto(audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=16000), allow_opus=True)
    out = AudioOut(16000, spec)
    packets: list[bytes] = []
    for i in range(0, len(x), 700):  # chunk sizes unrelated to the 20 ms frame
        packets += out.packets(x[i : i + 700])
    packets += out.packets(np.zeros(0, np.float32), last=True)
    assert all(packet_duration_ms(p) == 20.0 for p in packets)
    assert len(packets) == -(-len(x) // 320)
    assert 20 < np.mean([len(p) for p in packets]) < 120  # ~24 kbit/s: 60 bytes per 20 ms
    inp = AudioIn(spec, 16000)
    y = np.concatenate([inp.feed(p) for p in packets])
    assert inp.received_ms == pytest.approx(20.0 * len(packets))
    corr, _ = best_corr(x, y, 16000 // 50)
    assert corr > 0.9, f"Opus round trip correlation {corr:.2f}"


def test_opus_bad_input_is_named() -> None:
    spec = AudioSpec.from_proto(audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=48000), allow_opus=True)
    with pytest.raises(AudioFormatError, match="OPUS is not supported by this service"):
        AudioSpec.from_proto(audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=48000))
    with pytest.raises(AudioFormatError, match="not an Opus rate"):
        AudioSpec.from_proto(audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=22050), allow_opus=True)
    with pytest.raises(AudioFormatError, match="opus_bitrate_bps 500 is out of range"):
        AudioSpec.from_proto(audio_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=48000, opus_bitrate_bps=500),
                             allow_opus=True)
    with pytest.raises(AudioFormatError, match="Opus audio keeps codec state"):
        AudioOut(48000, spec).feed(np.zeros(960, np.float32))
    inp = AudioIn(spec, 16000)
    with pytest.raises(AudioFormatError, match="120 ms"):
        inp.feed(bytes([0xFF, 0x3F]) + b"\x00" * 10)  # code 3 with 63 frames of 20 ms
    # A lost packet (empty message) is concealed as 20 ms, keeping the clock.
    inp.feed(b"")
    assert inp.received_ms == 20.0
    assert spec.message_ms(OpusEncoder(48000).encode(np.zeros(960, np.float32))[0]) == 20.0


def test_caller_edge_passes_through_by_default_and_decodes_opus_with_suppression(speech_8k) -> None:
    from voxgrid.audio import MULAW, PCM16, StreamResampler, decode, encode
    from voxgrid.audio_edge import AgentEdge, CallerEdge, suppressor_for
    from voxgrid.v1 import agent_pb2

    assert suppressor_for(agent_pb2.EdgeAudioConfig()) is None  # the default: nothing runs
    assert suppressor_for(agent_pb2.EdgeAudioConfig(noise_suppression=True)) == ""
    assert suppressor_for(agent_pb2.EdgeAudioConfig(
        noise_suppression=True, noise_suppressor=agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_RNNOISE)) == "rnnoise"
    phone = AudioSpec(MULAW, 8000)
    plain = CallerEdge(phone)
    wire = encode(speech_8k[:1600], phone)
    assert plain.feed(wire) is wire and plain.backend_spec == phone and plain.received_ms == 200.0

    # A browser sends Opus at 48 kHz; the backend gets PCM16 at 48 kHz, suppressed.
    x48 = StreamResampler(8000, 48000).process(speech_8k, last=True)
    spec = AudioSpec(OPUS, 48000)
    agent = AgentEdge(spec)  # the same packetiser the agent side uses
    assert agent.backend_spec == AudioSpec(PCM16, 48000)
    sent = agent.packets(encode(x48, agent.backend_spec), utterance=1, last=True)
    packets = [p for p, _ in sent]
    assert all(agent.message_ms(p) == 20.0 for p in packets)
    assert [o for _, o in sent[:3]] == [0.0, 20.0, 40.0]  # offsets in the utterance, packet by packet
    # A cut-off utterance's pending audio does not leak into the next one, which starts at offset 0.
    agent.packets(encode(x48[:500], agent.backend_spec), utterance=2)
    assert [o for _, o in agent.packets(encode(x48[:960], agent.backend_spec), utterance=3)] == [0.0]
    edge = CallerEdge(spec, "speex")
    assert edge.backend_spec == AudioSpec(PCM16, 48000)
    y = decode(b"".join(edge.feed(p) for p in packets) + edge.flush(), edge.backend_spec)
    assert edge.received_ms == pytest.approx(20.0 * len(packets))
    assert abs(len(y) - len(x48)) < 48000 * 0.04
    corr, _ = best_corr(x48[::6], y[::6], 8000 // 50)  # compare at 8 kHz: cheaper, the speech band anyway
    assert corr > 0.8, f"Opus + speex correlation {corr:.2f}"


def test_a_profile_selects_the_suppressor() -> None:
    from voxgrid.orchestrator.profiles import parse_profiles

    from voxgrid.audio_edge import suppressor_for

    profiles = parse_profiles(
        "street:\n  edgeAudio: {noiseSuppression: true, noiseSuppressor: NOISE_SUPPRESSOR_WEBRTC}\n"
        "office:\n  description: quiet lines, nothing runs\n", "yaml")
    assert suppressor_for(profiles["street"].config.edge_audio) == "webrtc"
    assert suppressor_for(profiles["office"].config.edge_audio) is None
