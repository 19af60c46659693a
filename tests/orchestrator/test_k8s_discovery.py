"""The EndpointSlice watch loop, through the real `kubernetes` client, against an HTTP server on 127.0.0.1 that
speaks the API's list/watch protocol: a list with its resourceVersion, a chunked stream of JSON watch events
resumable from a version, a 410 Gone Status event for a compacted version, and a listener that can go away.

kmock's KubernetesEmulator was tried first: its watch ignores resourceVersion (it replays every object as
ADDED) and cannot answer 410, so a resumed watch and a re-list could not be told apart there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

pytest.importorskip("kubernetes.aio", reason="the k8s discovery tests need kubernetes>=37 (dev extra)")

from voxgrid.orchestrator.discovery import KubernetesDiscovery

from voxgrid.processes import free_port

NAMESPACE, SERVICE, PORT = "voice", "voxgrid-llm", 50051
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
_DROP = object()


class EndpointSliceApi:
    """The list and watch of one namespace's EndpointSlices, as the Kubernetes API serves them."""

    def __init__(self) -> None:
        self.version = 100
        self.oldest = 0  # a watch from an older version gets 410 Gone (etcd compacted it away)
        self.slices: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.watchers: set[asyncio.Queue[Any]] = set()
        self.requests: list[str] = []  # "list" / "watch@<version>", in order
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- the cluster changing ----------------------------------------------------------------------
    def put(self, name: str, ready: dict[str, bool], *, service: str = SERVICE, seen: bool = True) -> None:
        """Create or replace a slice; `seen=False` changes it without an event (lost to compaction)."""
        kind = "MODIFIED" if name in self.slices else "ADDED"
        self.version += 1
        self.slices[name] = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": str(self.version),
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ok}} for ip, ok in ready.items()],
            "ports": [{"name": "grpc", "port": PORT, "protocol": "TCP"}],
        }
        if seen:
            self._publish(kind, self.slices[name])

    def delete(self, name: str) -> None:
        self.version += 1
        gone = self.slices.pop(name)
        gone["metadata"]["resourceVersion"] = str(self.version)
        self._publish("DELETED", gone)

    def compact(self) -> None:
        """Forget the history: resuming from any version seen so far is answered 410 Gone."""
        self.history.clear()
        self.oldest = self.version + 1

    def drop_watches(self) -> None:
        """Every open watch connection is cut mid-stream."""
        for queue in self.watchers:
            queue.put_nowait(_DROP)

    def _publish(self, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": json.loads(json.dumps(obj))}
        self.history.append((self.version, event))
        for queue in self.watchers:
            queue.put_nowait(event)

    # -- HTTP ------------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(SLICES, self._endpoint_slices)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def down(self) -> None:
        """The API server goes away: open watches are cut and new connections are refused."""
        self.drop_watches()
        assert self._site is not None
        await self._site.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "test", "user": {"token": "t"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def _selected(self, request: web.Request) -> Callable[[dict[str, Any]], bool]:
        selector = request.query.get("labelSelector", "")
        key, _, value = selector.partition("=")
        return lambda obj: not selector or obj["metadata"]["labels"].get(key) == value

    async def _endpoint_slices(self, request: web.Request) -> web.StreamResponse:
        selected = self._selected(request)
        if request.query.get("watch") not in ("true", "1"):
            self.requests.append("list")
            return web.json_response({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": [obj for obj in self.slices.values() if selected(obj)]})
        since = int(request.query.get("resourceVersion") or self.version)
        self.requests.append(f"watch@{since}")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event: dict[str, Any]) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        if since < self.oldest:  # the API answers an expired version with a Status event, then ends the stream
            await send({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
                "reason": "Expired", "message": f"too old resource version: {since} ({self.oldest})"}})
            await response.write_eof()
            return response
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for version, event in self.history:
            if version > since:
                queue.put_nowait(event)
        self.watchers.add(queue)
        try:
            async with asyncio.timeout(float(request.query.get("timeoutSeconds", "60"))):
                while (event := await queue.get()) is not _DROP:
                    if selected(event["object"]):
                        await send(event)
        except TimeoutError:  # the server-side watch timeout: a clean end of the stream
            await response.write_eof()
            return response
        finally:
            self.watchers.discard(queue)
        assert request.transport is not None
        request.transport.abort()  # cut mid-stream: no final chunk
        return response


@contextlib.asynccontextmanager
async def watching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   api: EndpointSliceApi) -> AsyncIterator[KubernetesDiscovery]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path)))
    await api.start()
    discovery = KubernetesDiscovery(NAMESPACE, SERVICE, PORT, backoff_s=0.05, max_backoff_s=0.2)
    try:
        await discovery.start()
        await eventually(lambda: bool(api.watchers), "the watch is open")
        yield discovery
    finally:
        await discovery.stop()
        await api.stop()


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def errors() -> float:
    return REGISTRY.get_sample_value("voxgrid_orchestrator_discovery_errors_total",
                                     {"source": f"k8s:{NAMESPACE}/{SERVICE}"}) or 0.0


@pytest.fixture
def api() -> EndpointSliceApi:
    """The API with one slice of the watched Service: one ready replica."""
    api = EndpointSliceApi()
    api.put("llm-a", {"10.0.0.1": True})
    return api


async def test_watch_events_add_and_remove_ready_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           api: EndpointSliceApi) -> None:
    api.put("llm-a", {"10.0.0.1": True, "10.0.0.2": False})
    api.put("other", {"10.9.9.9": True}, service="voxgrid-tts")  # another Service's slice: never ours
    listed = api.version
    async with watching(tmp_path, monkeypatch, api) as discovery:
        assert discovery.targets == ["10.0.0.1:50051"]  # listed before start returned
        api.put("llm-b", {"10.0.0.3": True})
        await eventually(lambda: discovery.targets == ["10.0.0.1:50051", "10.0.0.3:50051"], "a new slice")
        api.put("llm-a", {"10.0.0.1": True, "10.0.0.2": True})  # the loading replica turned ready
        await eventually(lambda: "10.0.0.2:50051" in discovery.targets, "an endpoint turning ready")
        api.delete("llm-b")
        await eventually(lambda: discovery.targets == ["10.0.0.1:50051", "10.0.0.2:50051"], "a deleted slice")
        assert api.requests[:2] == ["list", f"watch@{listed}"], api.requests


async def test_a_dropped_watch_resumes_from_the_last_version_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  api: EndpointSliceApi) -> None:
    async with watching(tmp_path, monkeypatch, api) as discovery:
        api.put("llm-a", {"10.0.0.1": True, "10.0.0.4": True})
        await eventually(lambda: len(discovery.targets) == 2, "the change before the drop")
        seen = discovery.version
        api.drop_watches()
        api.put("llm-c", {"10.0.0.5": True})  # happens while no watch is open: the resumed watch replays it
        await eventually(lambda: "10.0.0.5:50051" in discovery.targets, "the change made during the drop")
        assert f"watch@{seen}" in api.requests[2:], api.requests
        assert discovery.targets == ["10.0.0.1:50051", "10.0.0.4:50051", "10.0.0.5:50051"]


async def test_410_gone_lists_again_and_finds_what_the_watch_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     api: EndpointSliceApi) -> None:
    async with watching(tmp_path, monkeypatch, api) as discovery:
        api.compact()
        api.put("llm-a", {"10.0.0.6": True}, seen=False)  # the pod was replaced; its events were compacted
        api.drop_watches()
        await eventually(lambda: discovery.targets == ["10.0.0.6:50051"], "the re-listed state")
        assert api.requests.count("list") == 2, api.requests
        await eventually(lambda: api.requests[-1] == f"watch@{api.version}", "a new watch from the new list")


async def test_an_api_outage_keeps_the_last_replicas_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  api: EndpointSliceApi,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voxgrid.orchestrator.discovery")
    api.put("llm-a", {"10.0.0.1": True, "10.0.0.2": True})
    async with watching(tmp_path, monkeypatch, api) as discovery:
        before = errors()
        await api.down()
        await eventually(lambda: errors() >= before + 3, "failed attempts counted while the API is down")
        assert discovery.targets == ["10.0.0.1:50051", "10.0.0.2:50051"], "the last known replicas stay in use"
        assert "keeping the last known replicas (10.0.0.1:50051, 10.0.0.2:50051)" in caplog.text
        api.delete("llm-a")
        api.put("llm-b", {"10.0.0.7": True})  # the cluster moved on during the outage
        await api.up()
        await eventually(lambda: discovery.targets == ["10.0.0.7:50051"], "the state after the outage")
        await eventually(lambda: bool(api.watchers), "watching again")
