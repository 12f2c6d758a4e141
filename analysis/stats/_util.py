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


def normal_result(
    method: str,
    *,
    diff: float,
    se: float,
    q: float,
    p: float,
    statistic: float,
    alpha: float,
    rel: float | None = None,
    se_rel: float | None = None,
) -> TestResult:
    """A fixed-horizon result: the difference ± q·se, and the relative lift ± q·se_rel."""
    rel_ci = None if rel is None or se_rel is None else interval(rel - q * se_rel, rel + q * se_rel)
    return TestResult(
        status="ok",
        method=method,
        difference=diff,
        interval=interval(diff - q * se, diff + q * se),
        p_value=p,
        statistic=statistic,
        relative_lift=rel,
        relative_interval=rel_ci,
        significant=p < alpha,
        alpha=alpha,
    )
