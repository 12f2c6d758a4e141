"""What the request path reads from the gateway process object, and nothing more.

The runtime's gateway satisfies `GatewayPort` structurally; the request path depends on this
protocol instead of importing the runtime, so it can be built and tested on its own.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from router.dataplane.breaker import Breakers
from router.dataplane.routing import CompiledExperiment, RoutingTable
from router.metrics import GatewayMetrics
from router.signals.events import Event
from serving.pool import ReplicaPool
from serving.upstream import UpstreamPool


class ProxySettings(Protocol):
    @property
    def max_body_bytes(self) -> int: ...

    @property
    def max_unit_id_bytes(self) -> int: ...

    @property
    def direct_arm_models(self) -> str:
        """ "allow", "refuse_treatment" or "refuse" (router/dataplane/plan.py)."""

    @property
    def client_write_timeout(self) -> float:
        """Seconds one send of a stream to its client may wait (router/dataplane/sse.py)."""


class EventSink(Protocol):
    def submit(self, event: Event) -> None: ...


class GatewayPort(Protocol):
    @property
    def table(self) -> RoutingTable: ...

    @property
    def settings(self) -> ProxySettings: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def pool(self) -> UpstreamPool:
        """The pooled clients, for a target's default timeouts."""

    @property
    def replicas(self) -> ReplicaPool: ...

    @property
    def breakers(self) -> Breakers: ...

    @property
    def model_inflight(self) -> Counter[str]:
        """Requests running, by upstream model (adapter drains wait for them)."""

    @property
    def inflight(self) -> set[str]:
        """Request ids whose event is not submitted yet (feedback for them waits)."""

    @property
    def writer(self) -> EventSink: ...

    def trip(self, name: str, reason: str) -> None:
        """The circuit breaker of experiment `name` opened: ask for its rollback."""

    def capture_request(
        self,
        exp: CompiledExperiment,
        arm: str,
        model: str,
        rid: str,
        request: bytes,
        response: list[bytes],
        stream: bool,
    ) -> None:
        """Hand a sampled exchange to the capture writer."""
