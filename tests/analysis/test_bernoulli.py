"""The Beta-binomial confidence sequence (analysis/stats/bernoulli.py): its bounds against a
brute-force evaluation of the mixture martingale on a grid, its coverage at every look by
simulation, and the quantile sequence built from a histogram."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from analysis.stats.bernoulli import (
    bucket_high,
    bucket_low,
    histogram_quantile,
    latency_bucket,
    log_mixture,
    quantile_bounds,
    rate_bounds,
)


def _brute_force(x: float, n: float, alpha: float, points: int = 200_001) -> tuple[float, float]:
    """The ends of {p : M_n(p) < 1/alpha} on a grid, with M_n from log-gamma functions."""
    p = np.linspace(0.0, 1.0, points)
    log_b = math.lgamma(1 + x) + math.lgamma(1 + n - x) - math.lgamma(2 + n)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.where(x > 0, x * np.log(p), 0.0)
        loglik += np.where(n - x > 0, (n - x) * np.log1p(-p), 0.0)
    inside = p[(log_b - loglik) < math.log(1 / alpha)]
    return float(inside.min()), float(inside.max())


@pytest.mark.parametrize(
    ("x", "n", "alpha"),
    [(0, 5000, 0.025), (3, 10, 0.05), (10, 10, 0.05), (50, 1000, 0.025), (7.3, 41.9, 0.05),
     (0.4, 2.5, 0.1), (900, 1000, 0.01), (1, 1, 0.05)],
)  # fmt: skip
def test_bounds_match_a_brute_force_grid(x: float, n: float, alpha: float) -> None:
    low, high = rate_bounds(x, n, alpha)
    g_low, g_high = _brute_force(x, n, alpha)
    step = 1 / 200_000
    assert g_low - step <= low <= g_low + step
    assert g_high - step <= high <= g_high + step
    assert low <= x / n <= high


def test_edge_cases() -> None:
    assert rate_bounds(0, 0, 0.05) == (0.0, 1.0)
    low, high = rate_bounds(0, 5000, 0.025)
    assert low == 0.0 and 0.0023 < high < 0.0025  # 0 errors in 5,000: below 0.25 %
    low, high = rate_bounds(5000, 5000, 0.025)
    assert high == 1.0 and 0.9975 < low < 0.9977
    with pytest.raises(ValueError):
        rate_bounds(1, 2, 1.5)


def test_bounds_grow_with_successes_and_shrink_with_trials() -> None:
    highs = [rate_bounds(x, 200, 0.05)[1] for x in range(0, 201, 10)]
    lows = [rate_bounds(x, 200, 0.05)[0] for x in range(0, 201, 10)]
    assert all(a < b for a, b in itertools.pairwise(highs))
    assert all(a < b for a, b in itertools.pairwise(lows))
    widths = [np.subtract(*rate_bounds(0.1 * n, n, 0.05)[::-1]) for n in (50, 500, 5000)]
    assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize("p", [0.01, 0.3])
def test_coverage_at_every_look(p: float) -> None:
    """The true rate leaves the sequence at some n <= 2,000 in at most alpha of the runs (Ville),
    and `rate_bounds` agrees with the martingale at the last look."""
    rng = np.random.default_rng(7 if p < 0.1 else 8)
    reps, horizon, alpha = 300, 2000, 0.05
    draws = rng.random((reps, horizon)) < p
    x = np.cumsum(draws, axis=1)
    n = np.arange(1, horizon + 1)
    out = log_mixture(p, x, n) >= math.log(1 / alpha)
    violated = out.any(axis=1)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert violated.mean() <= alpha + slack
    for r in range(20):
        low, high = rate_bounds(float(x[r, -1]), horizon, alpha)
        assert (low <= p <= high) == (not out[r, -1])


def test_a_wrong_rate_leaves_the_sequence() -> None:
    # power: 10 % errors are told apart from 1 % within a few hundred trials
    rng = np.random.default_rng(9)
    draws = rng.random(400) < 0.10
    low, _ = rate_bounds(float(draws.sum()), 400, 0.025)
    assert low > 0.02


# -- quantiles from a histogram -------------------------------------------------------------------


def _hist(values: np.ndarray) -> dict[int, int]:
    return dict(Counter(latency_bucket(float(v)) for v in values))


def test_buckets() -> None:
    for v in (0.2, 1.0, 1.5, 812.3, 30_000.0, 1e9):
        k = latency_bucket(v)
        assert bucket_low(k) <= v < bucket_high(k) or (k == 0 and v < 1)
    assert latency_bucket(1e30) == latency_bucket(1e20)  # bounded
    assert histogram_quantile({}) is None and quantile_bounds({}, 0.95, 0.05) is None


def test_quantile_bounds_against_rate_bounds() -> None:
    """The lower bound is the largest edge whose count below it has an upper rate bound under
    q; the upper bound the smallest edge whose count has a lower rate bound over q."""
    rng = np.random.default_rng(10)
    h = _hist(rng.lognormal(np.log(800), 0.6, 3000))
    n, q, alpha = 3000, 0.95, 0.025
    keys = sorted(h)
    below, edges_lo, edges_hi = 0, [], []
    for k in keys:
        edges_lo.append((bucket_low(k), below))
        below += h[k]
        edges_hi.append((bucket_high(k), below))
    want_lo = max(e for e, c in edges_lo if rate_bounds(c, n, alpha)[1] < q)
    want_hi = min(e for e, c in edges_hi if rate_bounds(c, n, alpha)[0] > q)
    bounds = quantile_bounds(h, q, alpha)
    assert bounds is not None
    assert bounds[0] == pytest.approx(want_lo, rel=1e-8)
    assert bounds[1] == pytest.approx(want_hi, rel=1e-8)
    estimate = histogram_quantile(h)
    assert estimate is not None and bounds[0] < estimate < bounds[1]


def test_quantile_coverage_at_every_look() -> None:
    """The true p95 of a log-normal with timeouts stays inside the histogram's sequence at
    every look in at least 1 - alpha of the runs."""
    rng = np.random.default_rng(12)
    reps, looks, batch, alpha = 200, 30, 100, 0.05
    sigma, median = 0.6, 800.0
    # true p95 of 0.998 LN + 0.002 at 30 s: 0.998 Φ(z) = 0.95
    from scipy import stats

    truth = median * math.exp(sigma * float(stats.norm.ppf(0.95 / 0.998)))
    misses = 0
    for _ in range(reps):
        lat = rng.lognormal(math.log(median), sigma, looks * batch)
        lat[rng.random(len(lat)) < 0.002] = 30_000.0
        buckets = np.array([latency_bucket(float(v)) for v in lat])
        h: Counter[int] = Counter()
        for i in range(looks):
            h.update(buckets[i * batch : (i + 1) * batch].tolist())
            b = quantile_bounds(h, 0.95, alpha)
            assert b is not None
            if not b[0] <= truth <= b[1]:
                misses += 1
                break
    slack = 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert misses / reps <= alpha + slack
