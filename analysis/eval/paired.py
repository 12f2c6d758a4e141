"""Paired statistics for the offline gate: both models answer the same cases, so each case is
its own control and only the cases where they differ carry information.

- `mcnemar_exact` (pass/fail): with b = cases the base passes and the candidate fails, c = the
  reverse, under H0 (no difference) b ~ Binomial(b + c, 1/2) given b + c. Two-sided exact
  p = min(1, 2 · P(X ≤ min(b, c))), X ~ Binomial(b + c, 1/2); p = 1 when b + c = 0. This is
  R's ``mcnemar.exact`` / ``exact2x2(paired=TRUE)`` central p-value.
- `paired_bootstrap` / `paired_bootstrap_test` (any score): percentile bootstrap of the mean
  per-case difference d_i = cand_i − base_i, resampling cases with replacement. Resample r
  takes indices ⌊u·n⌋ for the r-th block of n uniforms ``u`` drawn from
  ``numpy.random.default_rng(seed).random`` (so a loop drawing ``rng.random(n)`` per resample
  reproduces it exactly). The bootstrap p-value is 2 · min(share of resampled means ≤ 0,
  share ≥ 0), capped at 1: the test dual to the percentile interval.
- `paired_t`: the paired t-test and its interval, for reference.
- `minimum_detectable_effect`: the smallest |delta| a paired test at level α detects with the
  given power (formula in its docstring), and `small_n_warning`.

Deltas are fractions here (candidate − base); `analysis.eval.verdict` shows them in points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict
from scipy import optimize, stats

from analysis.types import Interval

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "PairedTResult",
    "mcnemar_exact",
    "minimum_detectable_effect",
    "paired_bootstrap",
    "paired_bootstrap_test",
    "paired_t",
    "small_n_warning",
]

# Per-case scores: a sequence of floats or bools, or a 1-D numpy array.
Scores = Sequence[float] | Sequence[bool] | NDArray[Any]
# Cells of one block of bootstrap indices (float64: 32 MiB).
_BLOCK_CELLS = 4_000_000


class McNemarResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    b: int  # base passed, candidate failed
    c: int  # base failed, candidate passed
    p_value: float


class BootstrapResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    mean_difference: float
    interval: Interval
    p_value: float
    confidence: float
    n_resamples: int


class PairedTResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    mean_difference: float
    interval: Interval
    p_value: float
    statistic: float | None


def _pair(base: Scores, cand: Scores) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    b = np.asarray(base, dtype=np.float64).reshape(-1)
    c = np.asarray(cand, dtype=np.float64).reshape(-1)
    if b.shape != c.shape:
        raise ValueError(f"paired samples differ in length: {b.size} base, {c.size} candidate")
    if b.size == 0:
        raise ValueError("no cases")
    if not (np.isfinite(b).all() and np.isfinite(c).all()):
        raise ValueError("scores must be finite")
    return b, c


def mcnemar_exact(base: Sequence[bool], cand: Sequence[bool]) -> McNemarResult:
    """Exact two-sided McNemar test on per-case pass/fail of the same cases (see module)."""
    if len(base) != len(cand):
        raise ValueError(f"paired samples differ in length: {len(base)} base, {len(cand)} cand")
    b = sum(1 for x, y in zip(base, cand, strict=True) if x and not y)
    c = sum(1 for x, y in zip(base, cand, strict=True) if y and not x)
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), b + c, 0.5)))
    return McNemarResult(n=len(base), b=b, c=c, p_value=p)


def paired_bootstrap_test(
    base_scores: Scores,
    cand_scores: Scores,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap of mean(cand − base), with its dual p-value (see module)."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    b, c = _pair(base_scores, cand_scores)
    d = c - b
    n = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        idx = (rng.random((rows, n)) * n).astype(np.intp)
        means[start : start + rows] = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0))))
    return BootstrapResult(
        n=n,
        mean_difference=float(d.mean()),
        interval=Interval(low=float(low), high=float(high)),
        p_value=p,
        confidence=confidence,
        n_resamples=n_resamples,
    )


def paired_bootstrap(
    base_scores: Scores,
    cand_scores: Scores,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The percentile-bootstrap interval of mean(cand − base) (see module)."""
    return paired_bootstrap_test(
        base_scores, cand_scores, n_resamples=n_resamples, confidence=confidence, seed=seed
    ).interval


def paired_t(
    base_scores: Scores,
    cand_scores: Scores,
    alpha: float = 0.05,
) -> PairedTResult:
    """Paired t-test of mean(cand − base) with its (1 − α) t interval. When every difference
    is equal (up to rounding: sd ≤ 1e-12 · max(1, |mean|)) the interval is that single value
    and p is 1 (all zero) or 0."""
    b, c = _pair(base_scores, cand_scores)
    d = c - b
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return PairedTResult(
            n=n,
            mean_difference=mean,
            interval=Interval(low=mean, high=mean),
            p_value=1.0 if abs(mean) <= 1e-12 else 0.0,
            statistic=None,
        )
    se = sd / math.sqrt(n)
    t = mean / se
    p = float(2.0 * stats.t.sf(abs(t), n - 1))
    q = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1))
    return PairedTResult(
        n=n,
        mean_difference=mean,
        interval=Interval(low=mean - q * se, high=mean + q * se),
        p_value=p,
        statistic=t,
    )


def minimum_detectable_effect(
    n: int,
    base_rate: float,
    alpha: float = 0.05,
    power: float = 0.8,
    discordance: float | None = None,
) -> float:
    """Smallest |delta| (a fraction) that a two-sided paired test at level ``alpha`` detects
    with probability ``power`` on ``n`` cases.

    Normal approximation to McNemar's test (Connor, Biometrics 1987): with ψ the discordant
    fraction (the mean of d², which for scores in [0, 1] plays the same role), δ solves

        n δ² = (z_{1−α/2} √ψ + z_{power} √(ψ − δ²))².

    ``discordance`` given: ψ is that constant. Not given: the models' outcomes are taken as
    independent at rates p (``base_rate``) and p ± δ, moving away from the nearer bound, so
    ψ(δ) = 2p(1 − p) + δ·|1 − 2p|; this is conservative, since a fine-tune agrees with its base
    far more often than independent models would.

    The result is at least k/n, where k is the fewest one-sided discordant pairs the exact
    test can declare significant (2 · 2^−k < α; 6 at α = 0.05), and at most 1 (1 also means no
    change is detectable with that power).
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError("alpha and power must be in (0, 1)")
    p = min(max(base_rate, 0.0), 1.0)
    k_min = math.floor(math.log2(2.0 / alpha)) + 1
    floor = min(1.0, k_min / n)
    za = float(stats.norm.ppf(1.0 - alpha / 2.0))
    zb = float(stats.norm.ppf(power))
    if discordance is not None:
        if discordance < 0:
            raise ValueError("discordance must be non-negative")
        psi0 = discordance
        slope = 0.0
        top = min(1.0, math.sqrt(psi0))
    else:
        psi0 = 2.0 * p * (1.0 - p)
        slope = abs(1.0 - 2.0 * p)
        top = max(p, 1.0 - p)
    if top <= 0.0:
        return floor

    def gap(delta: float) -> float:
        psi = psi0 + slope * delta
        return (
            math.sqrt(n) * delta
            - za * math.sqrt(psi)
            - zb * math.sqrt(max(psi - delta * delta, 0.0))
        )

    if gap(top) < 0.0:
        return 1.0
    lo = 1e-12
    if gap(lo) >= 0.0:
        return floor
    root = float(optimize.brentq(gap, lo, top, xtol=1e-10))
    return min(1.0, max(root, floor))


def small_n_warning(n: int, mde: float, min_n: int = 30) -> str | None:
    """A warning for suites with fewer than ``min_n`` cases, naming the MDE in points
    ("n=10: deltas this small are noise (MDE ±43 pts)"); None otherwise."""
    if n >= min_n:
        return None
    return f"n={n}: deltas this small are noise (MDE ±{100.0 * mde:.0f} pts)"
