"""Latency quantiles from the per-arm sums: a documented approximation.

The gateway keeps, per arm, the count, sum and sum of squares of request latencies (not a
histogram), so a quantile such as p95 is approximated by the log-normal distribution with the
same mean m and variance v (latencies are positive and right-skewed):

    σ² = ln(1 + v / m²),  μ = ln m − σ² / 2,  q_p = exp(μ + σ z_p)

For exact quantiles use Prometheus' `abgate_request_duration_seconds` histogram
(`histogram_quantile`); this approximation is what the report and the guardrail use.
"""

from __future__ import annotations

import math

from scipy import stats

from analysis.types import ArmTotals


def lognormal_quantile(mean: float, variance: float, q: float) -> float | None:
    if not (mean > 0 and variance >= 0 and 0 < q < 1):
        return None
    s2 = math.log1p(variance / (mean * mean))
    mu = math.log(mean) - s2 / 2
    return math.exp(mu + math.sqrt(s2) * float(stats.norm.ppf(q)))


def latency_quantile(totals: ArmTotals, q: float = 0.95) -> float | None:
    """Approximate latency quantile (ms) of an arm's requests; None with fewer than 2."""
    n = totals.requests
    if n < 2:
        return None
    mean = totals.latency_ms_sum / n
    variance = max(totals.latency_ms_sq_sum / n - mean * mean, 0.0) * n / (n - 1)
    return lognormal_quantile(mean, variance, q)
