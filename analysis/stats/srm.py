"""Sample ratio mismatch (Fabijan et al., KDD 2019): are units split as configured?

A chi-square goodness-of-fit test of the units per arm against the configured share. A broken
split (a bug in assignment, a crashing arm, bots) invalidates every other number, so p below
the threshold (0.001) pauses the experiment.

Across ramp steps the share changes; the controller tests the units that *arrived* during the
current step (distinct units first seen in each arm since the step began, less the units that
moved from control to treatment because the share went up: `moved_in`), for which the
configured share is the step's (docs/statistics.md).
"""

from __future__ import annotations

from scipy import stats

from analysis.types import SRMResult

THRESHOLD = 0.001


def srm_test(
    control_units: int, treatment_units: int, expected_share: float, threshold: float = THRESHOLD
) -> SRMResult:
    base = {
        "control_units": control_units,
        "treatment_units": treatment_units,
        "expected_share": expected_share,
        "threshold": threshold,
    }
    total = control_units + treatment_units
    if not 0 < expected_share < 1:
        return SRMResult(status="insufficient_data", reason="the share is 0 or 100 %", **base)
    if min(control_units, treatment_units) < 0:
        return SRMResult(status="insufficient_data", reason="negative counts", **base)
    expected = [total * (1 - expected_share), total * expected_share]
    if min(expected) < 5:
        return SRMResult(
            status="insufficient_data",
            reason="fewer than 5 units expected in an arm",
            **base,
        )
    chi2, p = stats.chisquare([control_units, treatment_units], f_exp=expected)
    return SRMResult(
        status="ok",
        observed_share=treatment_units / total,
        chi2=float(chi2),
        p_value=float(p),
        mismatch=float(p) < threshold,
        **base,
    )
