"""Noise suppression at the audio edge: STT word error rate with each suppressor vs none, and cost per frame.

    python benchmarks/bench_edge_audio.py                    # 10 telephone prompts, white + competing speech
    python benchmarks/bench_edge_audio.py --prompts 20 --snr 5 0 --engines speex webrtc rnnoise

Audio: the recorded 8 kHz Asterisk telephone prompts (Debian asterisk-core-sounds-en-wav) mixed with white
noise or with competing speech (other prompts of the same speaker, end to end) at each SNR. Each mix goes
through `NoiseStage` at 8 kHz exactly as a session's edge runs it (resampled to the engine's rate and back,
streamed in 20 ms chunks), then tiny.en int8 transcribes it the way the STT service's engine loads it
(packaged weights, beam 5). Prints WER (%) per noise type x SNR x suppressor and each engine's compute time
per 10 ms frame. WER over 100 % means whisper hallucinated (inserted words).

    python benchmarks/bench_edge_audio.py --echo-turns 20   # the echo guard instead (see echo_bench)

`--echo-turns N`: false barge-ins per 100 agent turns with and without the echo guard (old: no delay
tracking; new: with it). A silent speakerphone caller (tests/e2e/echo_caller.py: the agent's audio back into
its microphone at -6 dB, 40/120/60/100/80 ms late, a different delay every turn) against real STT
(tiny.en) and TTS (Piper) and a fake LLM with fixed ~10 s answers,
N typed prompts with the guard (echo cancellation + self-echo check), N/4 without it (an agent that hears
itself talks on and on); `--echo-each-alone` adds each mechanism alone; `--echo-interrupts K` then has a
second voice interrupt K answers per guard (detected per 100, seconds to the INTERRUPTED event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.stt.conftest import ASTERISK_DIR, asterisk_prompts, word_error_rate
from voxgrid.audio import StreamResampler, read_wav
from voxgrid.noise import NoiseEngineUnavailable, NoiseStage
from voxgrid.tables import table

RATE = 8000
CHUNK = RATE // 50  # 20 ms, what phone trunks send


def load_prompts(n: int, min_words: int = 3) -> list[tuple[str, np.ndarray]]:
    """(transcript, 8 kHz float32 audio) for `n` prompts spread over the package, in a fixed order."""
    prompts = {k: v for k, v in asterisk_prompts().items() if len(v.split()) >= min_words}
    names = sorted(prompts)
    step = max(1, len(names) // max(n, 1))
    out = []
    for name in names[::step]:
        audio, rate = read_wav(ASTERISK_DIR / f"{name}.wav")
        if rate == RATE:
            out.append((prompts[name], audio))
        if len(out) == n:
            break
    return out


def babble_source(n_words: int = 6) -> np.ndarray:
    """Competing speech: prompts that are not in the measured set (the same recorded voice), end to end."""
    prompts = {k: v for k, v in asterisk_prompts().items() if len(v.split()) >= n_words}
    names = sorted(prompts)[1::7][:12]
    return np.concatenate([read_wav(ASTERISK_DIR / f"{n}.wav")[0] for n in names])


def mix(clean: np.ndarray, noise_kind: str, snr_db: float, seed: int, babble: np.ndarray) -> np.ndarray:
    """`clean` plus noise scaled so speech power / noise power = snr_db (power over the whole prompt)."""
    rng = np.random.default_rng(seed)
    if noise_kind == "white":
        noise = rng.standard_normal(len(clean)).astype(np.float32)
    elif noise_kind == "speech":
        start = int(rng.integers(0, max(1, len(babble) - len(clean))))
        noise = np.resize(babble[start:], len(clean)).astype(np.float32)
    else:
        raise ValueError(f"noise kind {noise_kind!r}: use white or speech")
    p_s = float(np.mean(clean**2))
    p_n = float(np.mean(noise**2)) or 1e-12
    y = clean + noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    peak = float(np.max(np.abs(y)))
    return (y / peak * 0.9 if peak > 0.99 else y).astype(np.float32)


def suppress(x: np.ndarray, engine: str) -> tuple[np.ndarray, int, float]:
    """Stream `x` through a fresh NoiseStage in 20 ms chunks; returns (audio, frames, compute seconds)."""
    if engine == "none":
        return x, 0, 0.0
    stage = NoiseStage(RATE, engine)
    out = [stage.process(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)]
    out.append(stage.flush())
    return np.concatenate(out), stage.frames_processed, stage.compute_s


def frame_cost(engine: str, seconds: float = 20.0) -> tuple[float, float]:
    """(engine ms per 10 ms frame, whole stage ms per 10 ms incl. resampling) on noisy audio, measured alone
    (not interleaved with whisper, whose threads would inflate it)."""
    x = (0.1 * np.random.default_rng(0).standard_normal(int(RATE * seconds))).astype(np.float32)
    stage = NoiseStage(RATE, engine)
    stage.process(x[:CHUNK])  # warm up: DeepFilterNet loads its model (~0.4 s) on the first frame
    busy0, frames0 = stage.compute_s, stage.frames_processed
    t0 = time.perf_counter()
    for i in range(CHUNK, len(x), CHUNK):
        stage.process(x[i : i + CHUNK])
    wall = time.perf_counter() - t0
    frames = max(stage.frames_processed - frames0, 1)
    return 1000 * (stage.compute_s - busy0) / frames, 1000 * wall / ((len(x) - CHUNK) / RATE * 100)


def load_model(cpu_threads: int = 0):  # type: ignore[no-untyped-def]
    """tiny.en exactly as the STT service loads it (packaged weights, CTranslate2 int8 on CPU)."""
    from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine

    engine = FasterWhisperEngine("tiny.en-package", cpu_threads=cpu_threads)
    engine.load()
    return engine


def transcribe(engine, x: np.ndarray, beam: int = 5) -> str:  # type: ignore[no-untyped-def]
    x16 = StreamResampler(RATE, 16000).process(x, last=True)
    segments, _ = engine.model.transcribe(x16, beam_size=beam, language="en", condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def corpus_wer(engine, prompts: Sequence[tuple[str, np.ndarray]], noise_kind: str, snr: float,  # type: ignore[no-untyped-def]
               suppressor: str, babble: np.ndarray, beam: int = 5) -> tuple[float, int, float]:
    """WER over the whole set (words pooled), plus the suppressor's frames and compute seconds."""
    refs, hyps, frames, busy = [], [], 0, 0.0
    for i, (ref, clean) in enumerate(prompts):
        noisy = clean if noise_kind == "clean" else mix(clean, noise_kind, snr, seed=1000 + i, babble=babble)
        y, f, s = suppress(noisy, suppressor)
        frames, busy = frames + f, busy + s
        refs.append(ref)
        hyps.append(transcribe(engine, y, beam))
    return word_error_rate(" ".join(refs), " ".join(hyps)), frames, busy


def echo_bench(turns: int, each_alone: bool = False, interrupts: int = 0) -> None:
    """False barge-ins per 100 agent turns by echo-guard setting (the no-guard run is capped: it talks to itself),
    then real interruptions by a second voice detected per 100 and how fast, per guard."""
    import asyncio

    from tests.e2e.echo_caller import echo_stack, interrupting_call, silent_echo_call

    settings = [("none", False, False, False, max(2, turns // 4)),
                ("old guard (no delay tracking)", True, True, False, turns),
                ("guard with delay tracking", True, True, True, turns)]
    if each_alone:
        settings[1:1] = [("self-echo check only", False, True, False, turns),
                         ("echo cancellation only (tracking)", True, False, True, turns)]

    async def run() -> tuple[list[list[object]], list[list[object]]]:
        rows: list[list[object]] = []
        irows: list[list[object]] = []
        async with echo_stack() as stub:
            for name, aec, check, tracking, n in settings:
                t0 = time.perf_counter()
                r = await silent_echo_call(stub, aec=aec, check=check, turns=n, settle_s=20.0, tracking=tracking)
                agent_turns = max(1, r.agent_turns)
                att = f"{np.mean(r.attenuation_db):.1f}" if r.attenuation_db else "-"
                rows.append([name, n, r.agent_turns, r.interruptions, f"{100 * r.interruptions / agent_turns:.0f}",
                             r.echo_user_turns, r.rejected_as_echo, r.unsettled, att])
                print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
            if interrupts:
                voice = second_voice()
                for name, aec, check, tracking, _ in settings[-2:]:
                    r = await interrupting_call(stub, voice, aec=aec, check=check, tracking=tracking,
                                                turns=interrupts)
                    med = f"{np.median(r.detect_s):.2f}" if r.detect_s else "-"
                    worst = f"{max(r.detect_s):.2f}" if r.detect_s else "-"
                    irows.append([name, r.tries, r.detected, f"{100 * r.detected / max(1, r.tries):.0f}", med, worst])
                    print(irows[-1], flush=True)
        return rows, irows

    print(f"echo guard: {turns} prompts per setting, echo delay 40/120/60/100/80 ms changing every turn, -6 dB; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows, irows = asyncio.run(run())
    print(table(["guard", "prompts", "agent turns", "false barge-ins", "per 100 agent turns", "finals heard",
                 "rejected as echo", "never fell silent", "echo attenuation dB (mean per turn)"], rows))
    if irows:
        print("\nA second voice (flite rms) talking over the answer 0.3 / 3.0 / 1.0 s after it starts, in turn")
        print(table(["guard", "tries", "detected", "per 100", "median s to INTERRUPTED", "worst s"], irows))
    print(f"load at the end {os.getloadavg()[0]:.1f}")


def second_voice() -> np.ndarray:
    """flite's "rms" (a man's voice; the agent's Piper voice is a woman's) at 16 kHz."""
    import tempfile

    import soxr

    from voxgrid.speech import synthesize

    with tempfile.TemporaryDirectory() as d:
        x, rate = synthesize("Stop please. What time do you open tomorrow?", Path(d) / "rms.wav", voice="rms")
    return soxr.resample(x, rate, 16000).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echo-turns", type=int, default=0, help="run the echo-guard benchmark with this many prompts")
    ap.add_argument("--echo-each-alone", action="store_true", help="also each echo-guard mechanism alone")
    ap.add_argument("--echo-interrupts", type=int, default=0, help="and this many real interruptions per guard")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--snr", type=float, nargs="+", default=[5.0, 0.0])
    ap.add_argument("--noise", nargs="+", default=["white", "speech"], choices=["white", "speech"])
    ap.add_argument("--engines", nargs="+", default=["speex", "webrtc", "rnnoise", "dfn"])
    ap.add_argument("--cost-only", action="store_true", help="only the cost tables (no whisper, no WER)")
    ap.add_argument("--beam", type=int, default=5)
    args = ap.parse_args()
    if args.echo_turns:
        echo_bench(args.echo_turns, args.echo_each_alone, args.echo_interrupts)
        return
    if args.cost_only:
        cost_tables([e for e in args.engines if available(e)])
        return
    prompts = load_prompts(args.prompts)
    if not prompts:
        sys.exit("no telephone prompts: apt-get install asterisk-core-sounds-en-wav")
    engines = [e for e in args.engines if available(e)]
    model = load_model()
    babble = babble_source()
    audio_s = sum(len(a) for _, a in prompts) / RATE
    print(f"{len(prompts)} telephone prompts, {audio_s:.0f} s; tiny.en int8, beam {args.beam}; load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    clean, _, _ = corpus_wer(model, prompts, "clean", 0, "none", babble, args.beam)
    print(f"clean WER {100 * clean:.1f} %")
    rows = []
    for kind in args.noise:
        for snr in args.snr:
            row = [f"{'white noise' if kind == 'white' else 'competing speech'}, {snr:g} dB"]
            for sup in ["none", *engines]:
                wer, _, _ = corpus_wer(model, prompts, kind, snr, sup, babble, args.beam)
                row.append(f"{100 * wer:.1f}")
            rows.append(row)
            print("  ".join(row), flush=True)
    print()
    print("WER % (tiny.en) by suppressor")
    print(table(["noise", "none", *engines], rows))
    print()
    cost_tables(engines)
    print(f"\n{time.perf_counter() - t0:.0f} s")


def available(engine: str) -> bool:
    try:
        NoiseStage(RATE, engine).flush()
        return True
    except NoiseEngineUnavailable as exc:
        print(f"skipping {engine}: {exc}")
        return False


def cost_tables(engines: Sequence[str]) -> None:
    print(f"Suppressor cost per 10 ms of 8 kHz audio, 20 s streamed in 20 ms chunks (load "
          f"{os.getloadavg()[0]:.1f})")
    costs = {e: frame_cost(e) for e in engines}
    print(table(["engine", "engine call, ms", "stage incl. resampling, ms", "share of one core"],
                [[e, f"{a:.3f}", f"{b:.3f}", f"{b / 10 * 100:.2f} %"] for e, (a, b) in costs.items()]))
    print()
    print("The hop to the suppression worker, per 20 ms chunk (one chunk in flight at a time; load "
          f"{os.getloadavg()[0]:.1f})")
    hops = {e: asyncio.run(hop_cost(e)) for e in engines}
    print(table(["engine", "inline: loop ms", "worker: loop ms", "worker: submit to result, ms",
                 "of which the engine, ms", "hop overhead, ms"],
                [[e, f"{a:.3f}", f"{b:.3f}", f"{c:.3f}", f"{d:.3f}", f"{c - d:.3f}"]
                 for e, (a, b, c, d) in hops.items()]))
    print()
    sessions = 4
    print(f"Event-loop lag with {sessions} calls streaming 8 kHz audio in real time (20 ms chunks), 6 s; a 1 ms "
          f"ticker's lateness (load {os.getloadavg()[0]:.1f})")
    rows = []
    for e in engines:
        for offload in (False, True):
            p50, p99, worst = asyncio.run(loop_lag(e, offload, sessions))
            rows.append([e, "worker" if offload else "inline", f"{p50:.2f}", f"{p99:.2f}", f"{worst:.1f}"])
    print(table(["engine", "runs", "lag p50, ms", "lag p99, ms", "worst, ms"], rows))


async def hop_cost(engine: str, chunks: int = 200) -> tuple[float, float, float, float]:
    """Per 20 ms chunk: (inline: ms of the loop's time, worker: loop-thread CPU ms, worker: ms from submit to
    the result back on the loop, worker: ms inside the engine). The last two's difference is the hop."""
    from voxgrid.noise.worker import SuppressionWorker

    x = (0.1 * np.random.default_rng(0).standard_normal(CHUNK * chunks)).astype(np.float32)
    stage = NoiseStage(RATE, engine)
    stage.process(x[:CHUNK])  # warm up (DeepFilterNet loads its model on the first frame)
    t0 = time.perf_counter()
    for i in range(chunks):
        stage.process(x[i * CHUNK : (i + 1) * CHUNK])
    inline_ms = 1000 * (time.perf_counter() - t0) / chunks
    worker = SuppressionWorker()
    worker_stage = NoiseStage(RATE, engine)
    stream = worker.stream(worker_stage, lambda y: None)
    for i in range(3):  # warm up (the model load, the engine's delay)
        stream.submit(x[i * CHUNK : (i + 1) * CHUNK])
        await stream.drained()
    c0, t0, busy0 = time.thread_time(), time.perf_counter(), worker_stage.compute_s
    for i in range(chunks):
        stream.submit(x[i * CHUNK : (i + 1) * CHUNK])
        await stream.drained()
    wall, cpu, busy = time.perf_counter() - t0, time.thread_time() - c0, worker_stage.compute_s - busy0
    stream.close()
    worker.shutdown()
    return inline_ms, 1000 * cpu / chunks, 1000 * wall / chunks, 1000 * busy / chunks


async def loop_lag(engine: str, offload: bool, sessions: int, seconds: float = 6.0) -> tuple[float, float, float]:
    """How late a 1 ms timer fires while `sessions` calls stream through the engine inline or on the worker."""
    from voxgrid.noise.worker import SuppressionWorker

    worker = SuppressionWorker() if offload else None
    x = (0.1 * np.random.default_rng(1).standard_normal(int(RATE * seconds))).astype(np.float32)

    async def call(k: int) -> None:
        stage = NoiseStage(RATE, engine)
        stream = worker.stream(stage, lambda y: None) if worker is not None else None
        await asyncio.sleep(0.02 * k / sessions)  # calls do not send in lockstep
        start = time.perf_counter()
        for i in range(0, len(x), CHUNK):
            if stream is not None:
                await stream.ready()
                stream.submit(x[i : i + CHUNK])
            else:
                stage.process(x[i : i + CHUNK])
            await asyncio.sleep(max(0.0, start + (i + CHUNK) / RATE - time.perf_counter()))
        if stream is not None:
            stream.close()

    lateness: list[float] = []

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(1000 * (time.perf_counter() - t - 0.001))

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(call(k) for k in range(sessions)))
    tick.cancel()
    if worker is not None:
        worker.shutdown()
    a = np.array(lateness[50:])
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


if __name__ == "__main__":
    main()
