"""Replicas of one target: least-outstanding balancing, health checks, outlier ejection, panic
mode, and retries on another replica before anything has been sent to the client.

A `Replica` is one model server (one base URL), shared by every target that lists it. A
`ReplicaSet` is the replicas of one target. Selection prefers replicas that are in (they pass
their health checks and are not ejected) and serve the requested model (known from their
`/v1/models`), then the one with the fewest outstanding requests.

How a replica leaves and comes back:

- Active checks (serving/health.py) take it out while its health path fails, and a server
  without a health endpoint is not taken out for lacking one.
- Outlier ejection (in the spirit of Envoy's): after `max_failures` consecutive failures
  (connection errors, timeouts, 5xx) of real requests it is out for a time that doubles with
  each ejection.
- The first request that succeeds on it re-admits it at once, whatever took it out.
- When no replica serving the model is in, requests go to those that are out anyway (panic
  mode, as Envoy does below its panic threshold): a replica that is back answers at once,
  instead of every request failing until the next check. Panic mode is counted per replica
  (`panic_requests`) and logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from serving import health
from serving.errors import UpstreamConnectError, UpstreamError, UpstreamPoolExhausted
from serving.types import Timeouts
from serving.upstream import Upstream, UpstreamPool, UpstreamResponse

logger = logging.getLogger(__name__)

DEFAULT_HEALTH_PATH = "/health"  # vLLM's, at the server root (the base URL without /v1)

#: a replica's state, as /readyz and the metrics report it
HEALTHY, UNHEALTHY, EJECTED = "healthy", "unhealthy", "ejected"
STATES = (HEALTHY, UNHEALTHY, EJECTED)


class ConnectRefused(UpstreamConnectError):
    """Nothing listens at the replica's address."""

    reason = "connect_refused"


class NoReplica(UpstreamConnectError):
    """No replica of the target lists the requested model."""

    reason = "no_replica_for_model"


@dataclass(slots=True)
class Replica:
    url: str
    upstream: Upstream
    outstanding: int = 0
    healthy: bool = True  # the last active check's verdict; in until checked
    ejected_until: float = 0.0
    ejections: int = 0
    consecutive_failures: int = 0
    models: frozenset[str] | None = None  # from /v1/models; None: unknown (no filtering)
    last_error: str = ""
    health_path: str | None = DEFAULT_HEALTH_PATH  # None: no active checks
    check: str = health.CHECK_PENDING  # what decided its health last (serving/health.py)
    panic_requests: int = 0  # requests sent to it while it was out (panic mode)

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

    def state(self, now: float | None = None) -> str:
        if not self.healthy:
            return UNHEALTHY
        return HEALTHY if self.available(now) else EJECTED

    def readmit(self, why: str) -> None:
        logger.info("replica %s is back (%s); re-admitted", self.url, why)
        self.healthy = True
        self.ejected_until = 0.0
        self.consecutive_failures = 0


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
    panicking: bool = False  # no replica serving a requested model was in, at the last pick

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(r.url for r in self.replicas)

    def candidates(self, model: str | None, exclude: Iterable[Replica] = ()) -> list[Replica]:
        skip = {id(r) for r in exclude}
        return [r for r in self.replicas if id(r) not in skip and r.available() and r.serves(model)]

    def pick(self, model: str | None, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The replica for the next attempt; one that is out when none is in (panic mode);
        None when no untried replica lists `model`."""
        if len(self.replicas) == 1 and not exclude:  # the common case, without allocations
            only = self.replicas[0]
            if only.available() and only.serves(model):
                if self.panicking:
                    self._calm()
                return only
            return self._panic(model, ())
        found = self.candidates(model, exclude)
        if not found:
            return self._panic(model, exclude)
        if self.panicking:
            self._calm()
        return self._least(found)

    def _least(self, found: list[Replica]) -> Replica:
        self._turn += 1
        least = min(r.outstanding for r in found)
        tied = [r for r in found if r.outstanding == least]
        return tied[self._turn % len(tied)]

    def _panic(self, model: str | None, exclude: Iterable[Replica]) -> Replica | None:
        skip = {id(r) for r in exclude}
        listed = [r for r in self.replicas if id(r) not in skip and r.serves(model)]
        if not listed:
            return None
        chosen = self._least(listed)
        chosen.panic_requests += 1
        if not self.panicking:
            self.panicking = True
            why = "; ".join(f"{r.url}: {r.state()} ({r.last_error or 'no error'})" for r in listed)
            logger.warning(
                "no replica serving %r is in (%s); sending to them anyway (panic mode)", model, why
            )
        return chosen

    def _calm(self) -> None:
        self.panicking = False
        logger.info("a replica of %s is in again; panic mode over", ", ".join(self.urls))

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
                raise NoReplica(
                    f"no replica lists {model!r} among {', '.join(self.urls)}",
                    base_url=self.urls[0] if self.urls else "",
                )
            tried.append(replica)
            replica.outstanding += 1
            try:
                resp = await replica.upstream.post(path, body, headers, timeouts=timeouts)
            except UpstreamPoolExhausted as exc:
                # this gateway instance ran out of connections to it: not the replica's failure,
                # so no ejection; another replica may still have a free connection
                replica.outstanding -= 1
                last = exc
                continue
            except UpstreamError as exc:
                replica.outstanding -= 1
                last = _named(exc)
                self.failed(replica, last.reason)
                continue
            if resp.status == 404 and model is not None and self._another(model, tried):
                # "model does not exist" here: this replica lacks the adapter (restarted,
                # not loaded yet); forget that it served it and try another one
                replica.outstanding -= 1
                if replica.models is not None:
                    replica.models = replica.models - {model}
                await resp.__aexit__(None, None, None)
                continue
            if resp.status >= 500 and self._another(model, tried):
                replica.outstanding -= 1
                self.failed(replica, f"status_{resp.status}")
                await resp.__aexit__(None, None, None)
                last = UpstreamConnectError(f"status {resp.status}", base_url=replica.url)
                continue
            if resp.status < 500:
                self.succeeded(replica)
            resp.on_close = _releaser(replica)
            return resp

    def _another(self, model: str | None, tried: list[Replica]) -> bool:
        """Whether a replica that is in and was not tried yet serves `model` (no side effects,
        unlike `pick`)."""
        return bool(self.candidates(model, tried))

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
        if (replica.ejected_until or not replica.healthy) and not replica.available():
            replica.readmit("a request succeeded on it")


def _named(exc: UpstreamError) -> UpstreamError:
    """The error with the reason that says what happened (a refused connection by name)."""
    if exc.reason == "connect" and health.failure_reason(exc) == "connect_refused":
        named = ConnectRefused(str(exc), base_url=exc.base_url)
        named.__cause__ = exc
        return named
    return exc


def _releaser(replica: Replica) -> Callable[[], None]:
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
        self._session: aiohttp.ClientSession | None = None  # the health checks' client

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

    def configure(
        self, urls: tuple[str, ...], health_path: str | None = DEFAULT_HEALTH_PATH
    ) -> ReplicaSet:
        """`set_for`, and the health path the target gives its replicas (a replica that two
        targets list takes the path of the one configured last)."""
        found = self.set_for(urls)
        for replica in found.replicas:
            if replica.health_path != health_path:
                replica.health_path = health_path
                replica.check = health.CHECK_PENDING
        return found

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def states(self) -> dict[str, dict[str, str]]:
        """Per replica: its state, what decided it, and its last error (for /readyz)."""
        now = time.monotonic()
        return {
            r.url: {"state": r.state(now), "check": r.check, "last_error": r.last_error}
            for r in self._replicas.values()
        }

    async def check(self, replica: Replica, limit: float = 2.0) -> None:
        """One active check of `replica` (serving/health.py says how it decides)."""
        if self._session is None:
            self._session = health.new_session()
        verdict = await health.check(self._session, replica.url, replica.health_path, limit)
        self._apply(replica, verdict)

    @staticmethod
    def _apply(replica: Replica, verdict: health.Verdict) -> None:
        if verdict.check != replica.check and verdict.check in (
            health.CHECK_MODELS,
            health.CHECK_PASSIVE,
        ):
            logger.info(
                "replica %s has no health endpoint at %s; %s",
                replica.url,
                replica.health_path,
                "its model list answers for it"
                if verdict.check == health.CHECK_MODELS
                else "real traffic decides (outlier ejection)",
            )
        replica.check = verdict.check
        if verdict.alive is False:
            if replica.healthy:
                logger.warning(
                    "replica %s failed its health check (%s); taking it out",
                    replica.url,
                    verdict.reason,
                )
            replica.healthy = False
            replica.last_error = verdict.reason
            return
        if not verdict.keep_models:
            replica.models = verdict.models  # read before re-admitting: never a stale list
        if verdict.alive is None:
            return  # its model list could not be read: a replica coming back waits for it
        if not replica.healthy:
            replica.readmit("its health check passed")

    async def check_all(self, limit: float = 2.0) -> None:
        await asyncio.gather(*(self.check(r, limit) for r in self.replicas))

    async def close(self) -> None:
        session, self._session = self._session, None
        await health.close_session(session)
