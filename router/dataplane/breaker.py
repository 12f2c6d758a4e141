"""The gateway's own circuit breaker: no controller needed to stop a broken treatment.

Per gateway instance and experiment, a sliding window of the last N treatment outcomes. When at
least `min_errors` of them failed and the failed share reaches `error_ratio`, the breaker opens:
this gateway instance sends the experiment's treatment traffic to control at once, and asks the
store for a rollback (audited, actor `circuit-breaker`), which then reaches every gateway
instance. The state is keyed by experiment name and version, so a new version starts with a
closed breaker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from router.experiments import CircuitBreaker


@dataclass(slots=True)
class _Window:
    size: int
    outcomes: deque[bool] = field(default_factory=deque)
    errors: int = 0
    open: bool = False


class Breakers:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], _Window] = {}

    def is_open(self, name: str, version: int) -> bool:
        window = self._windows.get((name, version))
        return window is not None and window.open

    def record(self, name: str, version: int, config: CircuitBreaker, failed: bool) -> str | None:
        """Add one treatment outcome; returns the reason when this outcome opened the breaker."""
        if not config.enabled:
            return None
        key = (name, version)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(size=config.window)
        if window.open:
            return None
        window.outcomes.append(failed)
        window.errors += failed
        if len(window.outcomes) > window.size:
            window.errors -= window.outcomes.popleft()
        n = len(window.outcomes)
        if window.errors >= config.min_errors and window.errors >= config.error_ratio * n:
            window.open = True
            return (
                f"circuit breaker: {window.errors} of the last {n} treatment requests failed "
                f"(threshold {config.min_errors} and {config.error_ratio:.0%})"
            )
        return None

    def forget(self, live: set[tuple[str, int]]) -> None:
        """Drop windows of experiment versions that are no longer served."""
        for key in [k for k in self._windows if k not in live]:
            del self._windows[key]
