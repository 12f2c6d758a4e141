"""Sample ratio mismatch (Fabijan et al., KDD 2019): are units split as configured?

An always-valid test (Lindon & Malek, "Anytime-valid inference for multinomial count data",
NeurIPS 2022, in its two-arm form), so that checking it at every look, every 60 s for the whole
experiment, keeps the probability of *ever* pausing a correct split below the threshold.

Within a ramp step the configured share ρ is fixed and each new unit lands in treatment with
probability ρ, independently. With T of n = C + T new units in treatment, the Bayes factor of a
Beta(κρ, κ(1 − ρ)) mixture over the true share p against p = ρ,

    BF_n = B(κρ + T, κ(1 − ρ) + C) / B(κρ, κ(1 − ρ)) / (ρ^T (1 − ρ)^C),

is a nonnegative martingale with BF_0 = 1 under a correct split (a likelihood ratio mixed over a
prior), so by Ville's inequality P(BF_n ≥ 1/a for some n) ≤ a, however often it is looked at. It
is exact at any count (no chi-square approximation, which is anti-conservative at small ones).
κ = 100 (`CONCENTRATION`) spreads the prior over about ± 0.05 around a 50 % share, the size of
split bugs worth catching.

Each ramp step (and each resume) tests the units that arrived in it against its own share, so
the threshold a is spent over the steps: step k (1, 2, ...) tests at a_k = a / (k (k + 1)),
Σ a_k = a, and the experiment's false-pause probability over all its steps is at most a. The
reported p-value is the step's anytime p-value scaled the same way, min(1, 1 / (a_k / a · BF)),
so `mismatch` is p < a (docs/statistics.md).

The counts are the units that *arrived* during the current step: distinct units first seen in
each arm since the step began, less those that moved in from the other arm because the share
changed (`moved_in` per arm: into treatment when the share goes up, into control when it goes
down; analysis/policy.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import betaln

from analysis.types import SRMResult

THRESHOLD = 0.001
CONCENTRATION = 100.0


def step_weight(step: int) -> float:
    """The share of the threshold that ramp step `step` (1-based) may spend: 1 / (k (k + 1))."""
    k = max(1, step)
    return 1.0 / (k * (k + 1))


def log_bayes_factor(
    control: Any, treatment: Any, share: float, concentration: float = CONCENTRATION
) -> NDArray[Any]:
    """log BF of the Beta-binomial mixture against the configured share (scalars or arrays of
    counts; the same formula for the policy and the simulation study)."""
    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    a, b = concentration * share, concentration * (1 - share)
    out: NDArray[Any] = (
        betaln(a + t, b + c) - betaln(a, b) - t * math.log(share) - c * math.log1p(-share)
    )
    return out


def srm_test(
    control_units: int,
    treatment_units: int,
    expected_share: float,
    threshold: float = THRESHOLD,
    step: int = 1,
) -> SRMResult:
    """The always-valid SRM test of one step's new units (`step`: the step's number, 1-based,
    which sets its part of the threshold)."""
    base = {
        "control_units": control_units,
        "treatment_units": treatment_units,
        "expected_share": expected_share,
        "threshold": threshold,
        "step": max(1, step),
    }
    total = control_units + treatment_units
    if not 0 < expected_share < 1:
        return SRMResult(status="insufficient_data", reason="the share is 0 or 100 %", **base)
    if min(control_units, treatment_units) < 0:
        return SRMResult(status="insufficient_data", reason="negative counts", **base)
    if total == 0:
        return SRMResult(status="insufficient_data", reason="no new units in this step", **base)
    log_bf = float(log_bayes_factor(control_units, treatment_units, expected_share))
    # p = 1 / (w_k · BF), capped at 1; computed in logs (BF can overflow)
    log_p = -(math.log(step_weight(step)) + log_bf)
    p = 1.0 if log_p >= 0 else math.exp(log_p)
    return SRMResult(
        status="ok",
        observed_share=treatment_units / total,
        log_bayes_factor=log_bf,
        p_value=p,
        mismatch=p < threshold,
        **base,
    )
