"""Scenario (a): kill one of two replicas of a backend mid-run (SIGKILL, no drain) and count the sessions
that failed and those that went on. The orchestrator is given both replicas as `static:a,b`; sessions
on the killed replica must reconnect to the survivor or fail with a clear code.

    python -m voxgrid.loadtest.scenarios.failover --backend tts --sessions 3 --duration 60
"""

from __future__ import annotations

import asyncio
import sys

from voxgrid.loadtest.runner import run_load
from voxgrid.loadtest.scenarios.common import corpus, latency_row, latency_table, load_config, parser
from voxgrid.loadtest.scenarios.stack import Stack

from voxgrid.tables import table


async def main() -> int:
    p = parser(__doc__)
    p.add_argument("--backend", choices=["stt", "tts", "llm"], default="tts", help="which backend gets two replicas")
    p.add_argument("--kill-at", type=float, default=0.4, help="when to kill, as a fraction of the duration")
    args = p.parse_args()
    replicas = {"stt": 1, "llm": 1, "tts": 1, args.backend: 2}
    async with Stack(replicas) as stack:
        victim = stack.backends[args.backend][0]
        kill_s = args.duration * args.kill_at
        load = asyncio.create_task(run_load(load_config(stack.orchestrator.target, args), corpus(), progress=None))
        await asyncio.sleep(kill_s)
        assert victim.proc is not None
        victim.proc.kill()
        print(f"killed {args.backend} replica {victim.target} (pid {victim.proc.pid}) at {kill_s:.0f} s", flush=True)
        result = await load
    live = [s for s in result.sessions if s.started_s <= kill_s <= s.started_s + s.duration_s]
    failed = [s for s in live if s.code != "OK"]
    later = [s for s in result.sessions if s.started_s > kill_s]
    after_turns = [t for t in result.turns if t.started_s > kill_s and "voice_to_voice_ms" in t.metrics]
    print(table(["sessions live at kill", "continued (OK)", "failed", "failed codes", "opened after kill",
                 "of which OK", "turns answered after kill"],
                [[len(live), len(live) - len(failed), len(failed),
                  ", ".join(sorted({s.code for s in failed})) or "-", len(later),
                  sum(1 for s in later if s.code == "OK"), len(after_turns)]]))
    print()
    print(latency_table([latency_row(f"whole run ({args.backend} replica killed)", result)]))
    return 0 if not failed and after_turns else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
