"""Backend discovery: which replicas of a stage exist right now.

A ClusterIP Service would pin every long gRPC stream of an orchestrator to one pod, so the orchestrator
finds every replica itself: a static list, every address of a headless Service (DNS), or a watch on the
Service's EndpointSlices (ready endpoints only) through the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from voxgrid.orchestrator import telemetry

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
    """Watches discovery.k8s.io/v1 EndpointSlices of one Service (needs get/list/watch on them).

    List, then watch from the list's resourceVersion; a watch that ends or fails (the server's timeout, a cut
    connection, an API outage) resumes from the last version seen, after a growing backoff while it fails:
    the API replays what changed meanwhile, or answers 410 Gone when that version was compacted away, and
    only then is the slice list read again. Through an outage the last known replicas stay in use (they are
    still there: only the API is not), each failure is logged and counted
    (`voxgrid_orchestrator_discovery_errors_total`), and the watch never dies.
    """

    def __init__(self, namespace: str, service: str, port: int, *, watch_timeout_s: int = 60,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        super().__init__()
        self.namespace, self.service, self.port = namespace, service, port
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.source = f"k8s:{namespace}/{service}"
        self.version: str | None = None
        self._slices: dict[str, Any] = {}
        self._api_client: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            from kubernetes.aio import client, config
        except ImportError as exc:
            raise RuntimeError(
                "k8s: discovery needs the kubernetes client: pip install 'voxgrid[orchestrator-k8s]'"
            ) from exc
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            # KUBECONFIG read now (the client reads it once, at import), as kubectl would.
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        self._api_client = client.ApiClient(configuration)
        api = client.DiscoveryV1Api(self._api_client)
        try:  # the first list before serving, so the replica starts with the replicas it can use
            await self._list(api)
        except Exception as exc:
            self._failed("list", exc)
        self._task = asyncio.create_task(self._watch_forever(api), name=f"k8s-watch-{self.service}")

    @property
    def _selector(self) -> str:
        return f"kubernetes.io/service-name={self.service}"

    async def _list(self, api: Any) -> None:
        listed = await api.list_namespaced_endpoint_slice(self.namespace, label_selector=self._selector,
                                                         _request_timeout=self.watch_timeout_s)
        self._slices = {s.metadata.name: s for s in listed.items}
        self.version = listed.metadata.resource_version
        self._update()

    def _update(self) -> None:
        targets = ready_addresses(self._slices.values(), self.port)
        if targets != self.targets:
            log.info("%s replicas: %s", self.source, ", ".join(targets) or "none")
        self.targets = targets

    def _failed(self, what: str, exc: BaseException) -> None:
        telemetry.DISCOVERY_ERRORS.labels(self.source).inc()
        log.warning("%s: %s failed (%s); keeping the last known replicas (%s)", self.source, what,
                    _describe(exc), ", ".join(self.targets) or "none")

    async def _watch_forever(self, api: Any) -> None:
        from kubernetes.aio import watch
        from kubernetes.aio.client.exceptions import ApiException

        delay = self.backoff_s
        relist = self.version is None
        while True:
            try:
                if relist:
                    await self._list(api)
                    relist = False
                async with watch.Watch() as stream:
                    # timeout_seconds: the server ends the watch, so this loop (not the client) decides what next.
                    async for event in stream.stream(
                            api.list_namespaced_endpoint_slice, self.namespace, label_selector=self._selector,
                            resource_version=self.version, timeout_seconds=self.watch_timeout_s,
                            allow_watch_bookmarks=True, _request_timeout=self.watch_timeout_s + 10):
                        self._apply(event)
                        delay = self.backoff_s
                # The watch ended without an error: resume from the last version seen.
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:  # the version was compacted away: only a new list tells what changed
                    log.info("%s: watch expired (410 Gone), listing again", self.source)
                    relist = True
                    continue
                self._failed("list" if relist else "watch", exc)
            except Exception as exc:  # connection refused or cut, timeouts, a malformed answer
                self._failed("list" if relist else "watch", exc)
            else:
                delay = self.backoff_s
                continue
            # Resume from the last version seen (the API replays what happened meanwhile, or says 410).
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "BOOKMARK":  # nothing changed; only a newer version to resume from
            self.version = event["raw_object"]["metadata"]["resourceVersion"]
            return
        self.version = obj.metadata.resource_version
        if kind == "DELETED":
            self._slices.pop(obj.metadata.name, None)
        else:
            self._slices[obj.metadata.name] = obj
        self._update()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._api_client is not None:
            await self._api_client.close()


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status:  # an ApiException: the API's own status and reason
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
