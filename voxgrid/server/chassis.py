"""The one server chassis every voxgrid service runs in.

A service supplies a `ServiceRuntime` (its servicers and how to load/unload its engines); the chassis
supplies everything an operator expects of a replica: gRPC health v1 (NOT_SERVING while loading and
draining), server reflection, Prometheus /metrics on its own port, bearer-token auth, optional TLS,
message size limits, a session limit with RESOURCE_EXHAUSTED past it, and a SIGTERM drain that lets
live streams finish within a grace period. With TLS on, an optional plaintext listener (`health_port`)
answers only gRPC health, from the same status, because the kubelet's gRPC probe cannot speak TLS.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, start_http_server

from voxgrid.config import ServerSettings, TokenSource
from voxgrid.metrics import ServiceMetrics
from voxgrid.server.health import ReplicaHealth
from voxgrid.server.interceptors import AuthInterceptor, SessionGate
from voxgrid.server.lifecycle import SignalDrain

log = logging.getLogger("voxgrid.server")


class ServiceRuntime(abc.ABC):
    """A service as the chassis sees it: servicers to register and engines to start and stop."""

    name: ClassVar[str]

    @abc.abstractmethod
    def service_names(self) -> list[str]:
        """Full gRPC service names (health and reflection list them; their bidi RPCs are sessions)."""

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> None:
        """Add this service's servicers to the server."""

    def bind_health(self, health: ReplicaHealth) -> None:  # noqa: B027 - optional hook
        """Called once before `start`: a runtime whose calls need more than its own models (reachable
        backends) reports those conditions there as dependencies."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models; the replica reports NOT_SERVING until this returns."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release engines after the last stream has ended."""


class ServiceServer:
    """One replica: a grpc.aio server around a runtime, with its lifecycle."""

    def __init__(self, runtime: ServiceRuntime, settings: ServerSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = ServiceMetrics(runtime.name)
        self.gate = SessionGate(runtime.name, runtime.service_names(), settings.max_sessions, self.metrics)
        self.health = health.aio.HealthServicer()
        self.health_state = ReplicaHealth(self.health, runtime.service_names())
        runtime.bind_health(self.health_state)
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_httpd = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._ready = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.load_error: BaseException | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"http://{host}:{self.metrics_port}/metrics"

    async def start(self) -> None:
        """Bind ports and start serving health at once; load engines in the background."""
        s = self.settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(TokenSource(s)), self.gate],
            options=options,
            # The session limit is enforced by the gate with a clear message; this is only a backstop.
            maximum_concurrent_rpcs=None,
        )
        self.runtime.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [*self.runtime.service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        addr = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        if s.tls_cert_file and s.tls_key_file:
            creds = grpc.ssl_server_credentials([(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())])
            self.port = server.add_secure_port(addr, creds)
        else:
            self.port = server.add_insecure_port(addr)
        if self.port == 0:
            raise OSError(f"could not bind {addr}: is the port in use?")
        await self.health_state.publish()
        await server.start()
        self._server = server
        loop = asyncio.get_running_loop()  # read by the metrics thread at each scrape (a soak's leak probe)
        self.metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        if s.health_port:
            await self._start_health_listener(s.host, s.health_port)
        if s.metrics_port >= 0:
            self._metrics_httpd, _ = start_http_server(s.metrics_port, addr=s.host, registry=REGISTRY)
            self.metrics_port = self._metrics_httpd.server_port
        log.info("%s listening on %s (metrics %s%s), loading", self.runtime.name, self.address, self.metrics_url,
                 f", plaintext health on port {self.health_port}" if self.health_port else "")
        self._load_task = asyncio.create_task(self._load())

    async def _start_health_listener(self, host: str, port: int) -> None:
        """Plaintext, health only: it shares `self.health`, so probes see loading and draining as they are."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.health_port = server.add_insecure_port(addr)
        if self.health_port == 0:
            raise OSError(f"could not bind the health port {addr}: is it in use?")
        await server.start()
        self._health_server = server

    async def _load(self) -> None:
        try:
            await self.runtime.start()
        except BaseException as exc:
            self.load_error = exc
            log.exception("%s failed to load", self.runtime.name)
            self._ready.set()
            raise
        await self.health_state.set_loaded()
        if self.health_state.serving:
            log.info("%s ready on %s", self.runtime.name, self.address)
        else:
            log.info("%s loaded on %s; NOT_SERVING until its dependencies are met", self.runtime.name, self.address)
        self._ready.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()
        if self.load_error is not None:
            raise RuntimeError(f"{self.runtime.name} failed to load: {self.load_error}") from self.load_error

    async def drain(self, grace_s: float | None = None) -> None:
        """Refuse new streams, let live ones finish up to the grace period, then close."""
        if self._stopped.is_set():
            return
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        self.gate.draining = True
        self.metrics.draining.set(1)
        await self.health_state.set_draining()
        log.info("%s draining: %d live streams, grace %.1fs", self.runtime.name, self.gate.active, grace)
        finished = await self.gate.wait_idle(grace)
        if not finished:
            log.warning("%s grace period over with %d live streams: closing them", self.runtime.name,
                        self.gate.active)
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        with contextlib.suppress(Exception):
            await self.runtime.stop()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self.metrics.draining.set(0)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


@contextlib.asynccontextmanager
async def start_server(
    runtime: ServiceRuntime, settings: ServerSettings, *, wait_ready: bool = True
) -> AsyncIterator[ServiceServer]:
    """Run a replica for the duration of a block (tests, `voxgrid up` in-process)."""
    server = ServiceServer(runtime, settings)
    await server.start()
    try:
        if wait_ready:
            await server.wait_ready()
        yield server
    finally:
        await server.stop()


async def serve(runtime: ServiceRuntime, settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the process exit code."""
    server = ServiceServer(runtime, settings)
    signals = SignalDrain(server)
    await server.start()
    try:
        await server.wait_ready()
    except RuntimeError as exc:
        log.error("%s", exc)
        await server.stop()
        return 1
    await signals.wait()
    return 0
