"""Whether Redis answers, as the gateway instance's background services find it.

Three services talk to Redis on their own schedule: the config follower (every poll), the
health loop (every health interval) and the event writer (whenever events wait). Each reports
the outcome of its Redis calls here. Redis counts as unreachable while any of them last failed,
and as reachable again once every one that failed has succeeded since. An outage is logged
once when it starts and once when it ends, however many calls fail in between; `/readyz` and
the `abgate_redis_up` gauge read the same state.
"""

from __future__ import annotations

import logging

from router.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class RedisState:
    """Redis's reachability from the services' last calls; logs each change once."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._failing: dict[str, str] = {}  # service -> its last failure
        metrics.redis_up.set(1)

    @property
    def ok(self) -> bool:
        return not self._failing

    def up(self, service: str) -> None:
        """`service`'s last Redis call succeeded."""
        if service not in self._failing:
            return
        del self._failing[service]
        if not self._failing:
            self._metrics.redis_up.set(1)
            logger.info("Redis is reachable again (%s)", service)

    def down(self, service: str, exc: BaseException) -> None:
        """`service`'s last Redis call failed with `exc`."""
        first = not self._failing
        self._failing[service] = f"{type(exc).__name__}: {exc}"
        if first:
            self._metrics.redis_up.set(0)
            logger.warning(
                "Redis is unreachable (%s: %s); serving the last configuration and buffering "
                "events until it is back",
                service,
                self._failing[service],
            )

    def report(self, service: str) -> _Reporter:
        """A callback for `service` that reports each outcome (for the event writer)."""
        return _Reporter(self, service)


class _Reporter:
    def __init__(self, state: RedisState, service: str) -> None:
        self._state, self._service = state, service

    def __call__(self, exc: BaseException | None) -> None:
        if exc is None:
            self._state.up(self._service)
        else:
            self._state.down(self._service, exc)
