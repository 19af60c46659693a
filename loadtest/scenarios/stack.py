"""A local stack for the scenarios: backends as `voxgrid serve` children (several replicas allowed) and an
orchestrator pointed at all of them with `static:a,b`, so its failover is what gets exercised."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from voxgrid.processes import ServiceProcess


class Stack:
    def __init__(self, replicas: dict[str, int] | None = None, orchestrator_env: dict[str, str] | None = None,
                 backend_env: dict[str, str] | None = None) -> None:
        self.replicas = replicas or {"stt": 1, "llm": 1, "tts": 1}
        self.backends: dict[str, list[ServiceProcess]] = {
            name: [ServiceProcess(name, env=backend_env) for _ in range(n)] for name, n in self.replicas.items()}
        env = {f"VOXGRID_ORCHESTRATOR_{name.upper()}_BACKENDS": "static:" + ",".join(p.target for p in procs)
               for name, procs in self.backends.items()}
        self.orchestrator = ServiceProcess("orchestrator", env={**env, **(orchestrator_env or {})})

    def all(self) -> list[ServiceProcess]:
        return [p for procs in self.backends.values() for p in procs] + [self.orchestrator]

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.metrics_port}/metrics" for p in self.all()]

    async def __aenter__(self) -> Stack:
        started: list[ServiceProcess] = []
        try:
            for proc in [p for procs in self.backends.values() for p in procs]:
                await proc.__aenter__()
                started.append(proc)
            await self.orchestrator.__aenter__()
        except BaseException:
            for proc in started:
                await proc.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in reversed(self.all()):
            with contextlib.suppress(Exception):
                await proc.__aexit__(None, None, None)


def rss_mb(pid: int) -> float:
    """Resident memory of a process from /proc, MB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except FileNotFoundError:
        pass
    return 0.0


async def after(delay_s: float, action) -> None:  # type: ignore[no-untyped-def]
    await asyncio.sleep(delay_s)
    action()
