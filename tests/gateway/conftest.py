"""Gateway fixtures: a gateway in front of an orchestrator with the deterministic fake backends."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from voxgrid.gateway.app import GatewayServer, start_gateway
from voxgrid.gateway.media_client import to_mulaw
from voxgrid.gateway.settings import Settings

from tests.orchestrator.conftest import RATE, Stack, fake_stack, tone


@dataclass
class GatewayStack:
    agent: Stack
    gateway: GatewayServer

    @property
    def http(self) -> str:
        return self.gateway.url

    @property
    def ws(self) -> str:
        return self.gateway.url.replace("http", "ws", 1)


@contextlib.asynccontextmanager
async def gateway_stack(script: list[str], *, orchestrator_kw: dict | None = None, **gateway_kw):
    async with fake_stack(script, **(orchestrator_kw or {})) as agent:
        settings = Settings(port=0, orchestrator_backends=f"static:{agent.orchestrator.address}", **gateway_kw)
        async with start_gateway(settings) as gw:
            yield GatewayStack(agent, gw)


@pytest.fixture
def make_gateway():
    return gateway_stack


async def settled(gs: GatewayStack, timeout_s: float = 10.0) -> dict[str, int]:
    """Live sessions on every server once they stop changing (each must reach 0 when calls are over)."""
    def live() -> dict[str, int]:
        return {"gateway": gs.gateway.ctx.gate.active, "orchestrator": gs.agent.orchestrator.gate.active,
                **{n: s.gate.active for n, s in gs.agent.servers.items()}}

    for _ in range(int(timeout_s / 0.05)):
        if not any(live().values()):
            break
        await asyncio.sleep(0.05)
    return live()


ALL_CLOSED = {"gateway": 0, "orchestrator": 0, "stt": 0, "llm": 0, "tts": 0}


def chromium_path() -> str:
    """Debian's chromium for the page tests (playwright drives it), or skip saying how to get it."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; make setup does it)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install 'voxgrid[dev]')")
    return path


def mulaw_tone(seconds: float) -> bytes:
    """A stand-in utterance (the fake STT hears by energy) as a phone line carries it."""
    return to_mulaw(tone(seconds), RATE)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0
