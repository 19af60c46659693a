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

`--echo-turns N`: false barge-ins per 100 agent turns with and without the echo guard. A silent
speakerphone caller (tests/e2e/echo_caller.py: the agent's audio back into its microphone at -6 dB, 40, 120
and 80 ms late in turn) against real STT (tiny.en) and TTS (Piper) and a fake LLM with fixed ~10 s answers,
N typed prompts with the guard (echo cancellation + self-echo check), N/4 without it (an agent that hears
itself talks on and on); `--echo-each-alone` adds each mechanism alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

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
    t0 = time.perf_counter()
    for i in range(0, len(x), CHUNK):
        stage.process(x[i : i + CHUNK])
    wall = time.perf_counter() - t0
    return 1000 * stage.compute_s / max(stage.frames_processed, 1), 1000 * wall / (seconds * 100)


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


def echo_bench(turns: int, each_alone: bool = False) -> None:
    """False barge-ins per 100 agent turns by echo-guard setting (the no-guard run is capped: it talks to itself)."""
    import asyncio

    from tests.e2e.echo_caller import echo_stack, silent_echo_call

    async def run() -> list[list[object]]:
        rows: list[list[object]] = []
        async with echo_stack() as stub:
            settings = [("none", False, False, max(2, turns // 4)), ("both (the guard)", True, True, turns)]
            if each_alone:
                settings[1:1] = [("self-echo check only", False, True, turns), ("echo cancellation only", True, False,
                                                                                turns)]
            for name, aec, check, n in settings:
                t0 = time.perf_counter()
                r = await silent_echo_call(stub, aec=aec, check=check, turns=n, settle_s=20.0)
                agent_turns = max(1, r.agent_turns)
                att = f"{np.mean(r.attenuation_db):.1f}" if r.attenuation_db else "-"
                rows.append([name, n, r.agent_turns, r.interruptions, f"{100 * r.interruptions / agent_turns:.0f}",
                             r.echo_user_turns, r.rejected_as_echo, r.unsettled, att])
                print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
        return rows

    print(f"echo guard: {turns} prompts per setting; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = asyncio.run(run())
    print(table(["guard", "prompts", "agent turns", "false barge-ins", "per 100 agent turns", "finals heard",
                 "rejected as echo", "never fell silent", "echo attenuation dB (mean per turn)"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echo-turns", type=int, default=0, help="run the echo-guard benchmark with this many prompts")
    ap.add_argument("--echo-each-alone", action="store_true", help="also each echo-guard mechanism alone")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--snr", type=float, nargs="+", default=[5.0, 0.0])
    ap.add_argument("--noise", nargs="+", default=["white", "speech"], choices=["white", "speech"])
    ap.add_argument("--engines", nargs="+", default=["speex", "webrtc", "rnnoise"])
    ap.add_argument("--beam", type=int, default=5)
    args = ap.parse_args()
    if args.echo_turns:
        echo_bench(args.echo_turns, args.echo_each_alone)
        return
    prompts = load_prompts(args.prompts)
    if not prompts:
        sys.exit("no telephone prompts: apt-get install asterisk-core-sounds-en-wav")
    engines = []
    for e in args.engines:
        try:
            NoiseStage(RATE, e).flush()
            engines.append(e)
        except NoiseEngineUnavailable as exc:
            print(f"skipping {e}: {exc}")
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
    print(f"Suppressor cost per 10 ms of 8 kHz audio, 20 s streamed in 20 ms chunks (load "
          f"{os.getloadavg()[0]:.1f})")
    costs = {e: frame_cost(e) for e in engines}
    print(table(["engine", "engine call, ms", "stage incl. resampling, ms", "share of one core"],
                [[e, f"{a:.3f}", f"{b:.3f}", f"{b / 10 * 100:.2f} %"] for e, (a, b) in costs.items()]))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
