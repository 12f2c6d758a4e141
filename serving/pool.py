"""Replicas of one target: least-outstanding balancing, health checks, outlier ejection, and
retries on another replica before anything has been sent to the client.

A `Replica` is one model server (one base URL), shared by every target that lists it. A
`ReplicaSet` is the replicas of one target. Selection prefers healthy, non-ejected replicas that
serve the requested model (known from their `/v1/models`), then the one with the fewest
outstanding requests. A replica is ejected after `max_failures` consecutive failures (connection
errors, timeouts, 5xx), for a time that doubles with each ejection (in the spirit of Envoy's
outlier detection), and re-admitted afterwards; the health checker takes a replica out while
`/health` fails and puts it back when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from serving.errors import UpstreamConnectError, UpstreamError
from serving.types import Timeouts
from serving.upstream import Upstream, UpstreamPool, UpstreamResponse

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    url: str
    upstream: Upstream
    outstanding: int = 0
    healthy: bool = True
    ejected_until: float = 0.0
    ejections: int = 0
    consecutive_failures: int = 0
    models: frozenset[str] | None = None  # from /v1/models; None until first checked
    last_error: str = ""

    def available(self, now: float | None = None) -> bool:
        if not self.healthy:
            return False
        if self.ejected_until == 0.0:
            return True
        if (time.monotonic() if now is None else now) >= self.ejected_until:
            self.ejected_until = 0.0  # the ejection is over: re-admitted
            return True
        return False

    def serves(self, model: str | None) -> bool:
        return model is None or self.models is None or model in self.models


@dataclass(slots=True)
class OutlierPolicy:
    max_failures: int = 3
    base_ejection_seconds: float = 5.0
    max_ejection_seconds: float = 60.0


@dataclass(slots=True)
class ReplicaSet:
    replicas: tuple[Replica, ...]
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    _turn: int = 0

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(r.url for r in self.replicas)

    def candidates(self, model: str | None, exclude: Iterable[Replica] = ()) -> list[Replica]:
        skip = {id(r) for r in exclude}
        return [r for r in self.replicas if id(r) not in skip and r.available() and r.serves(model)]

    def pick(self, model: str | None, exclude: Iterable[Replica] = ()) -> Replica | None:
        if len(self.replicas) == 1 and not exclude:  # the common case, without allocations
            only = self.replicas[0]
            return only if only.available() and only.serves(model) else None
        found = self.candidates(model, exclude)
        if not found:
            return None
        self._turn += 1
        least = min(r.outstanding for r in found)
        tied = [r for r in found if r.outstanding == least]
        return tied[self._turn % len(tied)]

    async def post(
        self,
        path: str,
        body: bytes,
        headers: list[tuple[str, str]],
        *,
        model: str | None,
        timeouts: Timeouts | None = None,
    ) -> UpstreamResponse:
        """POST to the best replica; on a failure before the response, try another one."""
        tried: list[Replica] = []
        last: UpstreamError | None = None
        while True:
            replica = self.pick(model, tried)
            if replica is None:
                if last is not None:
                    raise last
                raise UpstreamConnectError(
                    f"no healthy replica serves {model!r} among {', '.join(self.urls)}",
                    base_url=self.urls[0] if self.urls else "",
                )
            tried.append(replica)
            replica.outstanding += 1
            try:
                resp = await replica.upstream.post(path, body, headers, timeouts=timeouts)
            except UpstreamError as exc:
                replica.outstanding -= 1
                self.failed(replica, exc.reason)
                last = exc
                continue
            if resp.status == 404 and model is not None and self.pick(model, tried) is not None:
                # "model does not exist" here: this replica lacks the adapter (restarted,
                # not loaded yet); forget that it served it and try another one
                replica.outstanding -= 1
                if replica.models is not None:
                    replica.models = replica.models - {model}
                await resp.__aexit__(None, None, None)
                continue
            if resp.status >= 500 and self.pick(model, tried) is not None:
                replica.outstanding -= 1
                self.failed(replica, f"status {resp.status}")
                await resp.__aexit__(None, None, None)
                last = UpstreamConnectError(f"status {resp.status}", base_url=replica.url)
                continue
            if resp.status < 500:
                self.succeeded(replica)
            resp.on_close = _releaser(replica)
            return resp

    def failed(self, replica: Replica, reason: str) -> None:
        replica.consecutive_failures += 1
        replica.last_error = reason
        if replica.consecutive_failures >= self.outlier.max_failures:
            seconds = min(
                self.outlier.base_ejection_seconds * 2**replica.ejections,
                self.outlier.max_ejection_seconds,
            )
            replica.ejected_until = time.monotonic() + seconds
            replica.ejections += 1
            replica.consecutive_failures = 0
            logger.warning("ejected replica %s for %.0f s: %s", replica.url, seconds, reason)

    @staticmethod
    def succeeded(replica: Replica) -> None:
        replica.consecutive_failures = 0


def _releaser(replica: Replica):  # type: ignore[no-untyped-def]
    def release() -> None:
        replica.outstanding -= 1

    return release


class ReplicaPool:
    """Every replica the gateway knows, one `Replica` per base URL, and the health checker."""

    def __init__(self, upstreams: UpstreamPool, outlier: OutlierPolicy | None = None) -> None:
        self.upstreams = upstreams
        self.outlier = outlier or OutlierPolicy()
        self._replicas: dict[str, Replica] = {}
        self._sets: dict[tuple[str, ...], ReplicaSet] = {}

    def replica(self, url: str) -> Replica:
        key = url.rstrip("/")
        found = self._replicas.get(key)
        if found is None:
            found = self._replicas[key] = Replica(url=key, upstream=self.upstreams.get(key))
        return found

    def set_for(self, urls: tuple[str, ...]) -> ReplicaSet:
        """The replica set of a target (created at config time, looked up per request)."""
        found = self._sets.get(urls)
        if found is None:
            found = self._sets[urls] = ReplicaSet(
                tuple(self.replica(u) for u in urls), outlier=self.outlier
            )
        return found

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    async def check(self, replica: Replica, limit: float = 2.0) -> None:
        """One health check: `/health` (the root of the server), then `/v1/models`."""
        up = replica.upstream
        ok = await up.ping("/health", limit=limit, root=True)
        models: frozenset[str] | None = None
        if ok:
            try:
                data = await asyncio.wait_for(up.get_json("/models"), limit)
                cards = data.get("data") if isinstance(data, dict) else None
                if isinstance(cards, list):
                    models = frozenset(
                        c["id"]
                        for c in cards
                        if isinstance(c, dict) and isinstance(c.get("id"), str)
                    )
            except (UpstreamError, TimeoutError):
                ok = replica.healthy  # a healthy replica stays in; a recovering one waits
        if not ok:
            if replica.healthy:
                logger.warning("replica %s failed its health check; taking it out", replica.url)
            replica.healthy = False
            replica.last_error = "health check failed"
            return
        if models is not None:
            replica.models = models  # read before re-admitting: never route on a stale list
        if not replica.healthy:
            logger.info("replica %s is healthy again", replica.url)
            replica.ejected_until = 0.0
            replica.consecutive_failures = 0
        replica.healthy = True

    async def check_all(self, limit: float = 2.0) -> None:
        await asyncio.gather(*(self.check(r, limit) for r in self.replicas))
