"""Scenario (b): SIGTERM a service under load. The chassis drains: health goes NOT_SERVING, new streams are
refused, live ones finish (up to the drain grace), then the process exits. Counted: sessions live at
SIGTERM that finished cleanly versus were cut, sessions refused afterwards, and how long the exit took.

    python -m voxgrid.loadtest.scenarios.drain --service orchestrator --sessions 3 --duration 45
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from voxgrid.loadtest.runner import run_load
from voxgrid.loadtest.scenarios.common import corpus, latency_row, latency_table, load_config, parser
from voxgrid.loadtest.scenarios.stack import Stack

from voxgrid.tables import table


async def main() -> int:
    p = parser(__doc__, duration=45.0)
    p.add_argument("--service", choices=["orchestrator", "stt", "llm", "tts"], default="orchestrator",
                   help="which service gets SIGTERM")
    p.add_argument("--term-at", type=float, default=0.3, help="when, as a fraction of the duration")
    p.add_argument("--grace-s", type=float, default=90.0, help="drain grace given to that service")
    args = p.parse_args()
    env_key = f"VOXGRID_{args.service.upper()}_DRAIN_GRACE_S"
    stack = Stack()
    target = stack.orchestrator if args.service == "orchestrator" else stack.backends[args.service][0]
    target.env[env_key] = str(args.grace_s)
    async with stack:
        term_s = args.duration * args.term_at
        load = asyncio.create_task(run_load(load_config(stack.orchestrator.target, args), corpus(), progress=None))
        await asyncio.sleep(term_s)
        assert target.proc is not None
        target.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        print(f"SIGTERM to {args.service} {target.target} at {term_s:.0f} s", flush=True)
        exit_code = await asyncio.to_thread(target.proc.wait, args.grace_s + 30)
        exit_s = time.monotonic() - sent
        result = await load
    live = [s for s in result.sessions if s.started_s <= term_s <= s.started_s + s.duration_s]
    cut = [s for s in live if s.code != "OK"]
    refused = [s for s in result.sessions if s.started_s > term_s and s.code != "OK"]
    print(table(["sessions live at SIGTERM", "drained (OK)", "cut", "cut codes", "refused after SIGTERM",
                 "exit after s", "exit code"],
                [[len(live), len(live) - len(cut), len(cut), ", ".join(sorted({s.code for s in cut})) or "-",
                  len(refused), f"{exit_s:.1f}", exit_code]]))
    for s in cut:
        print(f"  cut: {s.session} {s.code} after {s.duration_s:.1f} s, {s.turns} turns: {s.message}")
    print()
    print(latency_table([latency_row(f"whole run ({args.service} drained)", result)]))
    return 0 if live and not cut else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
