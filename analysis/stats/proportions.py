"""Fixed-horizon tests for two independent proportions (for the final report).

- `two_proportion_z`: the classic z-test with the pooled standard error, and Newcombe's hybrid
  score interval for the difference (Newcombe, Statistics in Medicine 1998, method 10), which
  behaves well near 0 and 1 where the Wald interval does not.
- `fisher_exact`: exact conditional test for small counts (any expected cell below 5).
- `compare_proportions` picks between them.
"""

from __future__ import annotations

import math

from scipy import stats

from analysis.stats._util import insufficient, interval
from analysis.types import TestResult


def wilson(x: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for one proportion."""
    z = stats.norm.ppf(1 - alpha / 2)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def newcombe(x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 − p2."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, alpha)
    l2, u2 = wilson(x2, n2, alpha)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high


def two_proportion_z(x_c: int, n_c: int, x_t: int, n_t: int, alpha: float = 0.05) -> TestResult:
    """Treatment minus control; pooled-SE z-test, Newcombe interval, relative lift."""
    method = "two-proportion z-test, Newcombe interval"
    if min(n_c, n_t) <= 0:
        return insufficient(method, "an arm has no observations", alpha)
    p_c, p_t = x_c / n_c, x_t / n_t
    pooled = (x_c + x_t) / (n_c + n_t)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    if se == 0:
        return insufficient(method, "all observations are equal (no variance)", alpha)
    z = (p_t - p_c) / se
    p = float(2 * stats.norm.sf(abs(z)))
    low, high = newcombe(x_t, n_t, x_c, n_c, alpha)
    rel = rel_ci = None
    if p_c > 0 and p_t > 0:
        # log relative risk with its usual standard error
        log_rr = math.log(p_t / p_c)
        se_rr = math.sqrt((1 - p_t) / x_t + (1 - p_c) / x_c)
        zc = stats.norm.ppf(1 - alpha / 2)
        rel = p_t / p_c - 1
        rel_ci = interval(math.exp(log_rr - zc * se_rr) - 1, math.exp(log_rr + zc * se_rr) - 1)
    return TestResult(
        status="ok", method=method, difference=p_t - p_c, interval=interval(low, high),
        p_value=p, statistic=z, relative_lift=rel, relative_interval=rel_ci,
        significant=p < alpha, alpha=alpha,
    )  # fmt: skip


def fisher_exact(x_c: int, n_c: int, x_t: int, n_t: int, alpha: float = 0.05) -> TestResult:
    method = "Fisher exact test, Newcombe interval"
    if min(n_c, n_t) <= 0:
        return insufficient(method, "an arm has no observations", alpha)
    _, p = stats.fisher_exact([[x_t, n_t - x_t], [x_c, n_c - x_c]])
    low, high = newcombe(x_t, n_t, x_c, n_c, alpha)
    p_c, p_t = x_c / n_c, x_t / n_t
    return TestResult(
        status="ok", method=method, difference=p_t - p_c, interval=interval(low, high),
        p_value=float(p), relative_lift=(p_t / p_c - 1) if p_c > 0 else None,
        significant=float(p) < alpha, alpha=alpha,
    )  # fmt: skip


def compare_proportions(x_c: int, n_c: int, x_t: int, n_t: int, alpha: float = 0.05) -> TestResult:
    """Fisher's exact test when an expected cell count is below 5, else the z-test."""
    if min(n_c, n_t) <= 0:
        return insufficient("two-proportion test", "an arm has no observations", alpha)
    pooled = (x_c + x_t) / (n_c + n_t)
    expected = [n * pooled for n in (n_c, n_t)] + [n * (1 - pooled) for n in (n_c, n_t)]
    if min(expected) < 5:
        return fisher_exact(x_c, n_c, x_t, n_t, alpha)
    return two_proportion_z(x_c, n_c, x_t, n_t, alpha)
