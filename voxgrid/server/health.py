"""What a replica's gRPC health service answers, on every listener (the main port and the plaintext health port).

A probe trusts SERVING to mean "a call will work now". Loading and draining are the chassis' part of that;
a runtime whose calls need more (the orchestrator needs a reachable replica of each stage) reports those
conditions as dependencies. Each dependency also answers under its own health name, so an operator sees
which one is missing instead of a bare NOT_SERVING.

A liveness probe must not restart a replica that is only waiting (a model loading, a drain, an orchestrator
whose LLM stage is still loading), so `voxgrid.liveness` answers SERVING whenever the process answers at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "voxgrid.liveness"


@dataclass
class _Dependency:
    met: bool
    required: bool


class ReplicaHealth:
    """The replica's overall status ("" and each service name) and its dependencies' own statuses."""

    def __init__(self, servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
        self.servicer = servicer
        self._names = ["", *service_names]
        self.loaded = False
        self.draining = False
        self._dependencies: dict[str, _Dependency] = {}

    @property
    def serving(self) -> bool:
        required = (d.met for d in self._dependencies.values() if d.required)
        return self.loaded and not self.draining and all(required)

    async def set_loaded(self) -> None:
        self.loaded = True
        await self.publish()

    async def set_draining(self) -> None:
        self.draining = True
        await self.publish()

    async def set_dependency(self, name: str, met: bool, *, required: bool = True) -> None:
        """`name` is the dependency's own health name; a required one that is not met makes the replica
        NOT_SERVING, an optional one (a mode the replica offers but does not default to) only reports."""
        self._dependencies[name] = _Dependency(met, required)
        await self.publish()

    async def publish(self) -> None:
        overall = SERVING if self.serving else NOT_SERVING
        await self.servicer.set(LIVENESS, SERVING)
        for name in self._names:
            await self.servicer.set(name, overall)
        for name, dependency in self._dependencies.items():
            await self.servicer.set(name, SERVING if dependency.met else NOT_SERVING)
