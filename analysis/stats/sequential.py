"""Always-valid inference: the mixture sequential probability ratio test (mSPRT).

For an asymptotically normal estimate Δ̂ of the treatment-minus-control difference with
variance V (here: the delta-method variance at the unit level), the normal-mixture likelihood
ratio against H0: Δ = 0, with mixing distribution N(0, τ²), is (Johari, Koomen, Pekelis &
Walsh, "Always Valid Inference", Operations Research 2022)

    Λ = sqrt(V / (V + τ²)) · exp( τ² Δ̂² / (2 V (V + τ²)) )

Λ is a martingale under H0, so by Ville's inequality P(sup Λ ≥ 1/α) ≤ α: the always-valid
p-value p_n = min(p_{n-1}, 1/Λ_n) can be watched after every request. Inverting the test gives
the confidence sequence (the asymptotic form GrowthBook documents, after Howard, Ramdas,
McAuliffe & Sekhon 2021)

    Δ̂ ± sqrt( V (V + τ²) / τ² · log( (V + τ²) / (V α²) ) )

τ is the effect size the test is tuned for: the sequence is tightest when V ≈ τ² ... it is
chosen per metric as the smallest effect worth detecting and fixed for the experiment
(docs/statistics.md). The relative lift Δ̂ / ĉ gets its own sequence, with its delta-method
variance var_t / c² + t² var_c / c⁴ (the control's estimate varies too) and mixing scale
`relative_tau` (default τ / |c|). With `previous` the running minimum p-value and the running
intersections of both intervals are kept.
"""

from __future__ import annotations

import math

from analysis.stats._util import finite, insufficient, interval
from analysis.types import Interval, TestResult

METHOD = "mSPRT (normal mixture), always valid"


def log_mixture_lr(diff: float, var: float, tau: float) -> float:
    t2 = tau * tau
    return 0.5 * math.log(var / (var + t2)) + t2 * diff * diff / (2 * var * (var + t2))


def half_width(var: float, tau: float, alpha: float) -> float:
    t2 = tau * tau
    return math.sqrt(var * (var + t2) / t2 * math.log((var + t2) / (var * alpha * alpha)))


def _intersect(low: float, high: float, previous: Interval | None) -> tuple[float, float]:
    """The running intersection; it can only be empty by chance (probability <= α), and is
    then started again from this look."""
    if previous is None:
        return low, high
    a, b = max(low, previous.low), min(high, previous.high)
    return (a, b) if a <= b else (low, high)


def msprt(
    diff: float,
    var: float,
    tau: float,
    alpha: float = 0.05,
    previous: TestResult | None = None,
    *,
    control_value: float | None = None,
    relative_variance: float | None = None,
    relative_tau: float | None = None,
) -> TestResult:
    """Always-valid test of Δ = 0 and confidence sequence for Δ at this look; with the control
    value and the relative lift's variance, its confidence sequence too."""
    if not finite(diff, var, tau) or tau <= 0:
        return insufficient(METHOD, "non-finite inputs or mixing scale", alpha)
    if var <= 0:
        return insufficient(METHOD, "no variance yet (too few units or all values equal)", alpha)
    llr = log_mixture_lr(diff, var, tau)
    p = 1.0 if llr <= 0 else min(1.0, math.exp(-llr))
    h = half_width(var, tau, alpha)
    low, high = diff - h, diff + h
    prev_rel = None
    if previous is not None and previous.status == "ok":
        if previous.p_value is not None:
            p = min(p, previous.p_value)
        low, high = _intersect(low, high, previous.interval)
        prev_rel = previous.relative_interval
    rel = rel_ci = None
    if control_value and relative_variance is not None and relative_variance > 0:
        rel = diff / control_value
        r_tau = relative_tau if relative_tau else tau / abs(control_value)
        hr = half_width(relative_variance, r_tau, alpha)
        rel_ci = interval(*_intersect(rel - hr, rel + hr, prev_rel))
    return TestResult(
        status="ok", method=METHOD, difference=diff, interval=interval(low, high), p_value=p,
        statistic=llr, relative_lift=rel, relative_interval=rel_ci, significant=p < alpha,
        alpha=alpha,
    )  # fmt: skip
