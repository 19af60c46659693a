"""Duplex capacity: wall time of one batched Moshi step (Mimi encode + LM + Mimi decode) per batch size.

Every active slot is one live conversation; a step must finish within one frame (80 ms) for all of them
to run in real time. Prints step time (p50/p95) per batch size, the real-time factor, and the largest
batch whose median step stays under the frame budget (p95 is shown: on a
shared machine it is noisy). Run it in the duplex venv (deploy/duplex-env.sh):

    PYTHONPATH=. .venv-duplex/bin/python benchmarks/bench_duplex.py                     # small random, CPU
    python benchmarks/bench_duplex.py --model random-7b --batches 1,8,16,32,64 --device cuda  # 7B arch, bf16
    make bench-gpu                                          # the same in .venv-gpu-duplex (CUDA torch)

On CUDA the steps run moshi's compiled paths (torch.compile and CUDA graphs, as a deployment does): the
warm-up steps before timing include the compilation. On CPU the engine turns compilation off.

`random-small` is a tiny random LM with the full-size Mimi: on CPU Mimi dominates. `random-7b` is the real
Moshi 7B architecture with random bf16 weights: its step time is the real model's (weights don't change
the arithmetic). The stock moshi server serves one conversation per process.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from voxgrid.services.duplex.engines.moshi_engine import MoshiBatchModel
from voxgrid.services.duplex.engines.slot_sampling import SlotSampling

from benchmarks.common import pct, table


def measure(model_name: str, batch: int, steps: int, device: str) -> list[float]:
    model = MoshiBatchModel(model_name, batch_size=batch, device=device)
    model.load()
    model.warmup()
    rng = np.random.default_rng(0)
    for slot in range(batch):
        model.configure_slot(slot, SlotSampling(0.7, 0.8, seed=slot))
    active = np.ones(batch, dtype=bool)
    times = []
    for _ in range(steps):
        pcm = (0.1 * rng.standard_normal((batch, model.frame_size))).astype(np.float32)
        t0 = time.perf_counter()
        model.step(pcm, active)  # returns host arrays: the step is complete (synchronised) here
        times.append(1000 * (time.perf_counter() - t0))
    del model
    gc.collect()  # the next batch size loads a fresh model: free this one's GPU memory first
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random-small", help="random-small, random-7b, hub id or local dir")
    ap.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes (slots)")
    ap.add_argument("--steps", type=int, default=25, help="timed steps per batch size")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    budget_ms = 80.0
    rows = []
    fits = 0
    for batch in [int(b) for b in args.batches.split(",")]:
        times = measure(args.model, batch, args.steps, args.device)
        p50, p95 = pct(times, 50), pct(times, 95)
        if p50 < budget_ms:
            fits = max(fits, batch)
        rows.append([batch, p50, p95, f"{p50 / budget_ms:.2f}", p50 / batch, "yes" if p50 < budget_ms else "no"])
    where = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"duplex step time, model {args.model}, {where}, {args.steps} steps per row, frame budget 80 ms")
    print(table(["slots", "step p50 ms", "step p95 ms", "RTF (p50/80ms)", "ms per session", "p50 < 80 ms"], rows))
    print(f"largest batch with median step under 80 ms: {fits if fits else 'none of those measured'}")


if __name__ == "__main__":
    main()
