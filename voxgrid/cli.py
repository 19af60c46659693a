"""`voxgrid`: serve a service, run the local stack, and talk to services as a client.

Service modules are imported only when used, so `voxgrid serve orchestrator` never imports torch and a
client command works in an environment that has none of the model packages.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from voxgrid import logs
from voxgrid.config import add_settings_flags, settings_from_args, settings_table

# service name -> module defining `Settings` and `create_runtime(settings)` (a gRPC service in the chassis),
# or `Settings` and `async def serve(settings) -> int` (a service with its own server, e.g. the gateway)
SERVICES: dict[str, str] = {
    "stt": "voxgrid.services.stt.app",
    "llm": "voxgrid.services.llm.app",
    "tts": "voxgrid.services.tts.app",
    "duplex": "voxgrid.services.duplex.app",
    "orchestrator": "voxgrid.orchestrator.app",
    "gateway": "voxgrid.gateway.app",
    "echo": "voxgrid.server.echo",
}
# modules defining `add_commands(subparsers)` for client commands (transcribe, generate, speak, ...)
CLIENT_COMMANDS: tuple[str, ...] = (
    "voxgrid.local_stack",
    "voxgrid.services.stt.cli",
    "voxgrid.services.llm.cli",
    "voxgrid.services.tts.cli",
    "voxgrid.services.duplex.cli",
    "voxgrid.orchestrator.cli",
    "voxgrid.loadtest.cli",
    "voxgrid.cost",
)


def service_module(name: str) -> Any:
    try:
        return importlib.import_module(SERVICES[name])
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"service {name!r} cannot start: {exc}. Install its extra: pip install 'voxgrid[{name}]'"
        ) from exc


# OpenMP runtimes (torch's, CTranslate2's) spin their idle threads for a while by default. With STT, LLM
# and TTS sharing a machine's cores (the local stack; pods packed on a node; CFS quotas), those spinning
# threads burn the time the other services' threads are waiting for. On 2 cores, `bench_peer.py --set
# OMP_WAIT_POLICY=PASSIVE` run right after the same run without it gave p50 voice-to-voice 0.86x (fast
# preview off) and 0.80x (on), STT final 0.83x; a single pair of runs on a shared host, so a direction, not
# a figure. Passive threads sleep at once; an operator who wants spinning sets OMP_WAIT_POLICY=ACTIVE.
OPENMP_WAIT_POLICY = "PASSIVE"


def _serve(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SERVICES:
        print(f"usage: voxgrid serve {{{','.join(SERVICES)}}} [--flags]\n"
              "       voxgrid serve <service> --help   lists that service's settings", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)  # before any OpenMP runtime is loaded
    module = service_module(name)
    parser = argparse.ArgumentParser(prog=f"voxgrid serve {name}", description=(module.__doc__ or "").strip())
    add_settings_flags(parser, module.Settings)
    args = parser.parse_args(argv[1:])
    settings = settings_from_args(module.Settings, args)
    logs.configure(settings.log_level, settings.log_format, service=name)
    own_serve = getattr(module, "serve", None)
    if asyncio.iscoroutinefunction(own_serve) and not hasattr(module, "create_runtime"):
        # A service that is not a gRPC server (the HTTP/WebSocket gateway) runs its own loop.
        return asyncio.run(own_serve(settings))
    from voxgrid.server.chassis import serve

    return asyncio.run(serve(module.create_runtime(settings), settings))


def _settings(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voxgrid settings", description="Print a service's settings.")
    parser.add_argument("service", choices=list(SERVICES))
    parser.add_argument("--markdown", action="store_true", help="as the README's table")
    args = parser.parse_args(argv)
    settings_cls = service_module(args.service).Settings
    if args.markdown:
        print(settings_table(settings_cls))
    else:
        for key, value in settings_cls().model_dump().items():
            print(f"{key} = {value!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgrid", description="Real-time voice agent cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run one service (voxgrid serve <service> --help)", add_help=False)
    sub.add_parser("settings", help="print a service's settings (--markdown for the README table)", add_help=False)
    for module_name in CLIENT_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of voxgrid is not in this checkout/extra
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if argv and argv[0] == "settings":
        return _settings(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    logs.configure("WARNING")
    result = func(args)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
