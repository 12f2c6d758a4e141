"""Welch's t-test for two means with unequal variances (unit-level means, final report)."""

from __future__ import annotations

import math

from scipy import stats

from analysis.stats._util import finite, insufficient, normal_result
from analysis.types import TestResult


def welch(
    mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int,
    alpha: float = 0.05,
) -> TestResult:  # fmt: skip
    """Treatment minus control. Variances are sample variances (ddof=1)."""
    method = "Welch t-test"
    if min(n_c, n_t) < 2:
        return insufficient(method, "each arm needs at least 2 units", alpha)
    if not finite(mean_c, var_c, mean_t, var_t) or min(var_c, var_t) < 0:
        return insufficient(method, "non-finite inputs", alpha)
    a, b = var_c / n_c, var_t / n_t
    se2 = a + b
    if se2 <= 0:
        return insufficient(method, "all values are equal (no variance)", alpha)
    se = math.sqrt(se2)
    df = se2 * se2 / (a * a / (n_c - 1) + b * b / (n_t - 1))
    diff = mean_t - mean_c
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(1 - alpha / 2, df))
    rel = se_rel = None
    if mean_c != 0:
        rel = mean_t / mean_c - 1
        # delta method for the ratio of two independent means
        se_rel = math.sqrt(b / mean_c**2 + mean_t**2 * a / mean_c**4)
    return normal_result(
        method, diff=diff, se=se, q=q, p=p, statistic=t, alpha=alpha, rel=rel, se_rel=se_rel
    )
