"""`voxgrid serve <service>` as a child process on a free loopback port: benchmarks, scenarios, load."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# The source tree holding the voxgrid package (a checkout, or site-packages when installed).
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServiceProcess:
    """`voxgrid serve <service>` in a child process on a free loopback port, healthy on enter."""

    def __init__(self, service: str, env: dict[str, str] | None = None, startup_s: float = 300,
                 python: str = sys.executable) -> None:
        self.service = service
        self.python = python  # another venv's interpreter for a service whose engine pins its own packages
        self.port = free_port()
        self.metrics_port = free_port()
        prefix = f"VOXGRID_{service.upper()}_"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), prefix + "PORT": str(self.port),
                    prefix + "METRICS_PORT": str(self.metrics_port), prefix + "LOG_LEVEL": "WARNING",
                    **(env or {})}
        self.startup_s = startup_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ServiceProcess:
        from voxgrid.client import channel, health_status

        # Popen only forks and execs; the waiting below is async.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [self.python, "-m", "voxgrid", "serve", self.service], env=self.env
        )
        async with channel(self.target) as ch:
            deadline = time.monotonic() + self.startup_s
            while await health_status(ch, timeout_s=1) != "SERVING":
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.service} did not become healthy")
                await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
