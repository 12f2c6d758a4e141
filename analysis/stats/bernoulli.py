"""Exact always-valid confidence sequences for a Bernoulli rate, and for a quantile from a
histogram.

Rate. After n trials with x successes, the Beta-binomial mixture martingale (Robbins) with a
uniform Beta(1, 1) prior is, for every p in (0, 1),

    M_n(p) = B(1 + x, 1 + n − x) / B(1, 1) / (p^x (1 − p)^(n − x)),

a nonnegative martingale with M_0 = 1 under the rate p. By Ville's inequality the chance that
it ever reaches 1/α is at most α, so C_n = {p : M_n(p) < 1/α} covers the true rate at every n
at once, whatever the looks and whenever one stops (an always-valid interval). −log M_n(p) is
concave in p with its maximum ≥ 0 at x/n, so C_n is an interval around x/n; its ends are found
by root finding on log M_n. x and n need not be integers (effective counts after a design
effect): the formula is used as it stands.

Quantile. The q-quantile ξ of a continuous latency distribution satisfies P(L < ξ) = q. The
latencies are Bernoulli trials 1{L < ξ} with rate q, and one confidence sequence covers q for
them. Their count below ξ is unknown, but the histogram gives the count C(b) below every bucket
edge b, and the upper bound U(x) of the sequence increases with x: for an edge b > ξ,
C(b) ≥ #{L < ξ}, so U(C(b)) ≥ U(#{L < ξ}) ≥ q on the coverage event. Hence every edge with
U(C(b)) < q lies at or below ξ, and the largest such edge is a lower bound for ξ; likewise the
smallest edge with a lower bound L(C(b)) > q is an upper bound. Both hold together, at every
look, with probability ≥ 1 − α, from the one sequence. The bounds are bucket edges, never
interpolated: conservative by up to one bucket (a factor `LATENCY_BUCKET_RATIO`), and moved out
by a further relative 1e-9 for the rounding of the logarithm that assigns a latency to a bucket.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy

from analysis.types import LATENCY_BUCKET_RATIO, LATENCY_BUCKETS_MAX

_EDGE_SLACK = 1e-9  # relative: a latency at an edge may fall on either side of it


def log_mixture(p: float | np.ndarray, x: float | np.ndarray, n: float | np.ndarray) -> np.ndarray:
    """log M_n(p) for x successes in n trials (vectorised)."""
    p, x, n = np.asarray(p, float), np.asarray(x, float), np.asarray(n, float)
    return np.asarray(betaln(1 + x, 1 + n - x) - xlogy(x, p) - xlog1py(n - x, -p))


def rate_bounds(x: float, n: float, alpha: float) -> tuple[float, float]:
    """The confidence sequence {p : M_n(p) < 1/α} for a Bernoulli rate: (low, high).

    With n = 0 it is [0, 1]; with x = 0 the low end is 0 and with x = n the high end is 1
    (M_n is below 1/α there)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if n <= 0:
        return 0.0, 1.0
    return _rate_bounds(min(max(float(x), 0.0), float(n)), float(n), float(alpha))


@functools.lru_cache(maxsize=4096)
def _rate_bounds(x: float, n: float, alpha: float) -> tuple[float, float]:
    """`rate_bounds` for clean arguments; cached, since consecutive looks often see the same
    counts (an arm without new requests), and in scalar arithmetic: the root finding evaluates
    log M_n a few dozen times, with its Beta function term computed once."""
    b = float(betaln(1 + x, 1 + n - x)) - math.log(1 / alpha)
    centre = x / n

    def f(p: float) -> float:
        out = b
        if x > 0:
            out -= x * math.log(p)
        if n - x > 0:
            out -= (n - x) * math.log1p(-p)
        return out

    low = 0.0
    if centre > 0 and f(np.nextafter(0.0, 1.0)) > 0:
        low = brentq(f, np.nextafter(0.0, 1.0), centre, xtol=1e-300, rtol=1e-13, maxiter=500)
    high = 1.0
    if centre < 1 and f(np.nextafter(1.0, 0.0)) > 0:
        high = brentq(f, centre, np.nextafter(1.0, 0.0), xtol=1e-300, rtol=1e-13, maxiter=500)
    return float(low), float(high)


# -- latency histograms (router/signals/lua.py writes them) ---------------------------------------


def latency_bucket(ms: float) -> int:
    """The bucket of a latency: floor(log(max(ms, 1)) / log(ratio)), at most the last one. Bucket
    k holds [ratio^k, ratio^(k+1)); bucket 0 also holds everything below 1 ms and the last one
    everything above its lower edge. The Lua script computes the same."""
    k = math.floor(math.log(max(ms, 1.0)) / math.log(LATENCY_BUCKET_RATIO))
    return min(k, LATENCY_BUCKETS_MAX)


def bucket_low(k: int) -> float:
    """Lower edge of bucket k (0 for bucket 0, which holds everything below 1 ms)."""
    return 0.0 if k <= 0 else LATENCY_BUCKET_RATIO**k


def bucket_high(k: int) -> float:
    """Upper edge of bucket k (infinite for the last bucket)."""
    return math.inf if k >= LATENCY_BUCKETS_MAX else LATENCY_BUCKET_RATIO ** (k + 1)


def _sorted(histogram: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    items = sorted((k, c) for k, c in histogram.items() if c > 0)
    keys = np.array([k for k, _ in items], dtype=np.int64)
    counts = np.array([c for _, c in items], dtype=float)
    return keys, counts


def histogram_quantile(histogram: Mapping[int, int], q: float = 0.95) -> float | None:
    """The q-quantile of the histogram's latencies: the geometric middle of the bucket where
    the cumulative count reaches q·n (within half a bucket, 1 %, of the sample quantile)."""
    keys, counts = _sorted(histogram)
    n = counts.sum()
    if n <= 0:
        return None
    j = int(np.searchsorted(np.cumsum(counts), q * n))
    k = int(keys[min(j, len(keys) - 1)])
    if k <= 0:
        return 1.0
    return float(LATENCY_BUCKET_RATIO ** (k + 0.5))


def quantile_bounds(
    histogram: Mapping[int, int], q: float, alpha: float
) -> tuple[float, float] | None:
    """An always-valid confidence sequence for the q-quantile of the latencies from their
    histogram (module docstring): (low, high) in ms, high may be infinite; None without data."""
    keys, counts = _sorted(histogram)
    n = float(counts.sum())
    if n <= 0:
        return None
    limit = math.log(1 / alpha)
    below = np.concatenate([[0.0], np.cumsum(counts)])  # count below each occupied bucket, then all
    # lower bound: the lower edge of occupied bucket j has below[j] latencies under it
    x_lo = below[:-1]
    out_lo = (x_lo < q * n) & (log_mixture(q, x_lo, n) >= limit)
    low = 0.0
    if out_lo.any():
        j = int(np.flatnonzero(out_lo)[-1])
        low = bucket_low(int(keys[j])) * (1 - _EDGE_SLACK)
    # upper bound: the upper edge of occupied bucket j has below[j + 1] latencies under it
    x_hi = below[1:]
    out_hi = (x_hi > q * n) & (log_mixture(q, x_hi, n) >= limit)
    high = math.inf
    if out_hi.any():
        j = int(np.flatnonzero(out_hi)[0])
        high = bucket_high(int(keys[j])) * (1 + _EDGE_SLACK)
    return low, high
