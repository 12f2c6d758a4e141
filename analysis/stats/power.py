"""Planning: units needed to detect a difference between two proportions, and how long.

Two-sided test at level α with power 1 − β, a share s of units in treatment (unpooled variance):

    N = (z_{1−α/2} + z_{1−β})² · ( p_c (1 − p_c) / (1 − s) + p_t (1 − p_t) / s ) / δ²

with δ = p_t − p_c. `design_effect` (≥ 1) inflates N when the metric is per request and users
make several correlated requests (1 + (m − 1) ρ for m requests per user and intra-user
correlation ρ). Days = N / units per day.
"""

from __future__ import annotations

import math

from scipy import stats

from analysis.types import PowerPlan


def plan_proportion_test(
    baseline: float,
    mde: float,
    share: float,
    units_per_day: float,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
) -> PowerPlan:
    """`mde` is the absolute difference to detect (−0.05: a 5-point drop)."""
    treated = baseline + mde
    if not (0 < baseline < 1 and 0 < treated < 1 and mde != 0):
        return PowerPlan(status="insufficient_data", reason="rates must lie in (0, 1), mde ≠ 0")
    if not (0 < share < 1 and units_per_day > 0 and 0 < alpha < 1 and 0 < power < 1):
        return PowerPlan(
            status="insufficient_data", reason="share, traffic, alpha or power out of range"
        )
    if design_effect < 1:
        return PowerPlan(status="insufficient_data", reason="design_effect must be at least 1")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    var = baseline * (1 - baseline) / (1 - share) + treated * (1 - treated) / share
    total = math.ceil(z * z * var / (mde * mde) * design_effect)
    return PowerPlan(
        status="ok",
        units_total=total,
        units_control=math.ceil(total * (1 - share)),
        units_treatment=math.ceil(total * share),
        days=total / units_per_day,
    )
