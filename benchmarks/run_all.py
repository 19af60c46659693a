"""`make bench`: every benchmark table, one after another (CPU defaults; each script has its own flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_chassis.py"],
    ["bench_stt.py"],
    ["bench_llm.py"],
    ["bench_tts.py"],
    ["bench_orchestrator.py", "overhead"],
    ["bench_orchestrator.py", "v2v"],
    ["bench_gateway.py"],
]


def main() -> int:
    failed = []
    for args in RUNS:
        print(f"\n=== {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent).returncode:
            failed.append(" ".join(args))
    print("\nduplex (its own venv): make bench-duplex")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
