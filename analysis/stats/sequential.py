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
chosen per metric as the smallest effect worth detecting (docs/statistics.md). With `previous`
the running minimum p-value and the running intersection of intervals are kept.
"""

from __future__ import annotations

import math

from analysis.stats._util import finite, insufficient, interval
from analysis.types import TestResult

METHOD = "mSPRT (normal mixture), always valid"


def log_mixture_lr(diff: float, var: float, tau: float) -> float:
    t2 = tau * tau
    return 0.5 * math.log(var / (var + t2)) + t2 * diff * diff / (2 * var * (var + t2))


def half_width(var: float, tau: float, alpha: float) -> float:
    t2 = tau * tau
    return math.sqrt(var * (var + t2) / t2 * math.log((var + t2) / (var * alpha * alpha)))


def msprt(
    diff: float,
    var: float,
    tau: float,
    alpha: float = 0.05,
    previous: TestResult | None = None,
    *,
    control_value: float | None = None,
) -> TestResult:
    """Always-valid test of Δ = 0 and confidence sequence for Δ at this look."""
    if not finite(diff, var, tau) or tau <= 0:
        return insufficient(METHOD, "non-finite inputs or mixing scale", alpha)
    if var <= 0:
        return insufficient(METHOD, "no variance yet (too few units or all values equal)", alpha)
    llr = log_mixture_lr(diff, var, tau)
    p = 1.0 if llr <= 0 else min(1.0, math.exp(-llr))
    h = half_width(var, tau, alpha)
    low, high = diff - h, diff + h
    if previous is not None and previous.status == "ok" and previous.interval is not None:
        p = min(p, previous.p_value if previous.p_value is not None else 1.0)
        low, high = max(low, previous.interval.low), min(high, previous.interval.high)
        if low > high:  # the running intersection can only be empty by chance (prob. <= α)
            low, high = diff - h, diff + h
    rel = rel_ci = None
    if control_value:
        rel = diff / control_value
        a, b = sorted((low / control_value, high / control_value))
        rel_ci = interval(a, b)
    return TestResult(
        status="ok", method=METHOD, difference=diff, interval=interval(low, high), p_value=p,
        statistic=llr, relative_lift=rel, relative_interval=rel_ci, significant=p < alpha,
        alpha=alpha,
    )  # fmt: skip
