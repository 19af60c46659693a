"""Backend discovery: which replicas of a stage exist right now.

A ClusterIP Service would pin every long gRPC stream of an orchestrator to one pod, so the orchestrator
finds every replica itself: a static list, every address of a headless Service (DNS), or a watch on the
Service's EndpointSlices (ready endpoints only) through the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("voxgrid.orchestrator.discovery")


class Discovery:
    """Current set of `host:port` targets; `start` begins refreshing, `stop` ends it."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _join(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StaticDiscovery(Discovery):
    def __init__(self, targets: Iterable[str]) -> None:
        super().__init__()
        self.targets = [t.strip() for t in targets if t.strip()]


class DnsDiscovery(Discovery):
    """Every A/AAAA record of a name, re-resolved periodically (a headless Service returns each ready pod)."""

    def __init__(self, name: str, port: int, refresh_s: float = 5.0) -> None:
        super().__init__()
        self.name, self.port, self.refresh_s = name, port, refresh_s
        self._task: asyncio.Task[None] | None = None

    async def resolve(self) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        return sorted({_join(info[4][0], self.port) for info in infos})

    async def start(self) -> None:
        with contextlib.suppress(OSError):
            self.targets = await self.resolve()
        self._task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                self.targets = await self.resolve()
            except OSError as exc:  # keep the last good answer through a DNS hiccup
                log.warning("resolving %s failed: %s", self.name, exc)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def ready_addresses(endpoint_slices: Iterable[Any], port: int) -> list[str]:
    """Targets from EndpointSlice objects (kubernetes client models or dicts): ready endpoints only."""

    def get(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    out = set()
    for eps in endpoint_slices:
        for ep in get(eps, "endpoints") or []:
            conditions = get(ep, "conditions")
            ready = get(conditions, "ready") if conditions is not None else None
            if ready is False:
                continue  # ready unset means unknown, which Kubernetes says to treat as ready
            for address in get(ep, "addresses") or []:
                out.add(_join(address, port))
    return sorted(out)


class KubernetesDiscovery(Discovery):
    """Watches discovery.k8s.io/v1 EndpointSlices of one Service (needs get/list/watch on them)."""

    def __init__(self, namespace: str, service: str, port: int) -> None:
        super().__init__()
        self.namespace, self.service, self.port = namespace, service, port
        self._slices: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        try:
            from kubernetes import client, config, watch
        except ImportError as exc:
            raise RuntimeError(
                "k8s: discovery needs the kubernetes client: pip install 'voxgrid[orchestrator-k8s]'"
            ) from exc
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.DiscoveryV1Api()
        selector = f"kubernetes.io/service-name={self.service}"
        initial = await asyncio.to_thread(api.list_namespaced_endpoint_slice, self.namespace, label_selector=selector)
        self._slices = {s.metadata.name: s for s in initial.items}
        self.targets = ready_addresses(self._slices.values(), self.port)
        version = initial.metadata.resource_version

        def run() -> None:  # the kubernetes client is synchronous: its watch lives on its own thread
            nonlocal version
            while not self._stop.is_set():
                try:
                    for event in watch.Watch().stream(api.list_namespaced_endpoint_slice, self.namespace,
                                                      label_selector=selector, resource_version=version,
                                                      timeout_seconds=60):
                        obj = event["object"]
                        version = obj.metadata.resource_version
                        if event["type"] == "DELETED":
                            self._slices.pop(obj.metadata.name, None)
                        else:
                            self._slices[obj.metadata.name] = obj
                        self.targets = ready_addresses(self._slices.values(), self.port)
                        if self._stop.is_set():
                            return
                except Exception as exc:  # expired resource version, API restart: list again
                    log.warning("EndpointSlice watch of %s/%s restarted: %s", self.namespace, self.service, exc)
                    self._stop.wait(1.0)
                    fresh = api.list_namespaced_endpoint_slice(self.namespace, label_selector=selector)
                    self._slices = {s.metadata.name: s for s in fresh.items}
                    self.targets = ready_addresses(self._slices.values(), self.port)
                    version = fresh.metadata.resource_version

        self._thread = threading.Thread(target=run, name=f"k8s-watch-{self.service}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()


def parse_discovery(spec: str, refresh_s: float = 5.0) -> Discovery:
    """`static:h:p,h:p` | `dns:NAME:PORT` | `k8s:NAMESPACE/SERVICE:PORT`; a bare `h:p,...` means static."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("static", "dns", "k8s"):
        return StaticDiscovery(spec.split(","))
    if kind == "static":
        return StaticDiscovery(rest.split(","))
    name, _, port = rest.rpartition(":")
    if not name or not port.isdigit():
        raise ValueError(f"backend spec {spec!r} needs a port: {kind}:NAME:PORT")
    if kind == "dns":
        return DnsDiscovery(name, int(port), refresh_s)
    namespace, _, service = name.partition("/")
    if not service:
        raise ValueError(f"backend spec {spec!r} must look like k8s:NAMESPACE/SERVICE:PORT")
    return KubernetesDiscovery(namespace, service, int(port))
