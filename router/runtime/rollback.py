"""What happens when an experiment's circuit breaker opens: an audited rollback in the store.

The breaker already makes this gateway instance serve control; the rollback, written by the
actor ``circuit-breaker``, makes every gateway instance do so and tells the operator why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from router.control.changes import apply_change
from router.control.lifecycle import transition
from router.control.store import ConfigDoc, ConfigStore
from router.errors import Conflict, StoreUnavailable
from router.experiments import Experiment
from router.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

ATTEMPTS = 5


class BreakerRollback:
    """Rolls tripped experiments back in the background, retrying while Redis is unreachable."""

    def __init__(
        self,
        store: ConfigStore,
        metrics: GatewayMetrics,
        apply: Callable[[ConfigDoc], None],
        retry_delay: float = 0.5,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._apply = apply  # swaps the written document in at once, before the watcher sees it
        self.retry_delay = retry_delay
        self._tasks: set[asyncio.Task[None]] = set()

    def trip(self, name: str, reason: str) -> None:
        """The circuit breaker of experiment `name` opened: start its rollback."""
        logger.warning("experiment %s: %s; rolling back", name, reason)
        self.metrics.breaker_trips.labels(name).inc()
        task = asyncio.create_task(self.rollback(name, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def rollback(self, name: str, reason: str) -> None:
        """Write the rollback; an experiment no longer live needs none (another gateway instance
        or an operator got there first)."""

        def fn(current: Experiment | None, _: dict[str, Experiment]) -> Experiment | None:
            if current is None or current.state not in ("running", "paused"):
                raise Conflict("nothing to roll back")
            return transition(current, "rollback", reason)

        for attempt in range(ATTEMPTS):
            try:
                doc = await apply_change(
                    self.store, name, fn, actor="circuit-breaker", action="rollback",
                    reason=reason,
                )  # fmt: skip
            except Conflict:
                return
            except StoreUnavailable:
                await asyncio.sleep(self.retry_delay * (attempt + 1))
                continue
            self._apply(doc)
            return
        logger.error("could not record the circuit breaker's rollback of %s", name)

    async def wait(self) -> None:
        """Wait for the rollbacks under way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Cancel the rollbacks under way (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
