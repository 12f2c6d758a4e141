"""Small helpers shared by the statistics modules."""

from __future__ import annotations

import math

from analysis.types import Interval, TestResult


def insufficient(method: str, reason: str, alpha: float = 0.05) -> TestResult:
    return TestResult(status="insufficient_data", method=method, reason=reason, alpha=alpha)


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def interval(low: float, high: float) -> Interval:
    return Interval(low=low, high=high)
