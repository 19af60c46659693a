"""Scenario (c): soak. Sessions churn (short sessions, redial) for a fixed time while the resident memory
(RSS, /proc) of every service is sampled; growth is reported per service, also as MB per hour from a
least-squares slope over the second half of the run (the first half includes warm-up allocations).

    python -m voxgrid.loadtest.scenarios.soak --sessions 3 --duration 300
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
from voxgrid.loadtest.runner import run_load
from voxgrid.loadtest.scenarios.common import corpus, latency_row, latency_table, load_config, parser
from voxgrid.loadtest.scenarios.stack import Stack, rss_mb

from voxgrid.tables import table


def growth_per_hour(times_s: list[float], mb: list[float]) -> float:
    """Slope of RSS over the second half of the samples, MB/hour (NaN with fewer than 3 points)."""
    half = len(times_s) // 2
    t, m = np.asarray(times_s[half:]), np.asarray(mb[half:])
    if len(t) < 3 or np.ptp(t) == 0:
        return float("nan")
    return float(np.polyfit(t, m, 1)[0] * 3600.0)


async def main() -> int:
    p = parser(__doc__, duration=180.0)
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    args = p.parse_args()
    args.turns = 1 if args.turns == 2 else args.turns  # churn: one question per call, then redial
    async with Stack() as stack:
        procs = {f"{p.service}:{p.port}": p for p in stack.all()}
        samples: dict[str, list[float]] = {name: [] for name in procs}
        times: list[float] = []
        load = asyncio.create_task(run_load(load_config(stack.orchestrator.target, args), corpus(), progress=None))
        t0 = time.monotonic()
        while not load.done():
            times.append(time.monotonic() - t0)
            for name, proc in procs.items():
                assert proc.proc is not None
                samples[name].append(rss_mb(proc.proc.pid))
            await asyncio.wait({load}, timeout=args.sample_s)
        result = load.result()
    rows = []
    for name, mb in samples.items():
        rows.append([name, mb[0], max(mb), mb[-1], mb[-1] - mb[0], growth_per_hour(times, mb)])
    print(f"soak: {len(result.sessions)} sessions, {len(result.turns)} turns in {result.duration_s:.0f} s, "
          f"{len(times)} RSS samples")
    print(table(["service", "RSS start MB", "RSS max MB", "RSS end MB", "growth MB", "MB/hour (2nd half)"], rows))
    print()
    print(latency_table([latency_row("soak", result)]))
    return 0 if result.error_rate() == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
