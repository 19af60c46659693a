"""A real local stack (stt, llm, tts, orchestrator as `voxgrid serve` children) for the load-test smoke run."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator

import pytest_asyncio

from voxgrid.local_stack import Child, plan, start_children, stop_children

STACK = ["stt", "llm", "tts", "orchestrator"]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base_port() -> int:
    """A base port whose whole `voxgrid up` port plan (gRPC and metrics) is free on loopback."""
    for _ in range(50):
        base = random.randint(20000, 40000)
        if all(_free(c.port) and _free(c.metrics_port) for c in plan(STACK, base)):
            return base
    raise RuntimeError("no free port range for the stack")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local_stack(tmp_path_factory) -> AsyncIterator[list[Child]]:  # type: ignore[no-untyped-def]
    """One stack per test module: starting the LLM takes tens of seconds."""
    children = plan(STACK, free_base_port())
    try:
        await start_children(children, str(tmp_path_factory.mktemp("stack-logs")), deadline_s=240)
        yield children
    finally:
        await stop_children(children)
