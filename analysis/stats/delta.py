"""Ratio metrics at the level of the randomisation unit: the delta method.

A per-request metric (thumbs-up rate, error rate, mean latency) is a ratio of two sums over
units, R = Σy_i / Σn_i, where unit i (a user) contributed y_i (e.g. thumbs up) and n_i (e.g.
votes). Requests of one user are correlated, so the variance must be computed over units, not
requests (Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018):

    Var(R) ≈ (σ_y² − 2 R σ_yn + R² σ_n²) / (K μ_n²)

with K units, μ_n = Σn/K and the sample (co)variances of the per-unit totals. Everything is
computed from S1 = Σy, Σn, S2 = Σy², Σn² and Σyn, which the gateway keeps incrementally.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.types import Estimate, UnitSums


def ratio_from_sums(
    k: float, sy: float, sn: float, syy: float, snn: float, syn: float
) -> tuple[float, float] | None:
    """(ratio, delta-method variance), or None when there is too little data."""
    if k < 2 or sn <= 0:
        return None
    my, mn = sy / k, sn / k
    vy = (syy - k * my * my) / (k - 1)
    vn = (snn - k * mn * mn) / (k - 1)
    cyn = (syn - k * my * mn) / (k - 1)
    r = sy / sn
    var = (vy - 2 * r * cyn + r * r * vn) / (k * mn * mn)
    if not (math.isfinite(r) and math.isfinite(var)):
        return None
    return r, max(var, 0.0)


def ratio_estimate(units: UnitSums, numerator: str, denominator: str) -> Estimate | None:
    """The arm's estimate of Σy/Σn from its unit-level sums."""
    out = ratio_from_sums(
        units.units,
        units.total(numerator),
        units.total(denominator),
        units.sq(numerator),
        units.sq(denominator),
        units.xy(numerator, denominator),
    )
    if out is None:
        return None
    return Estimate(
        value=out[0],
        variance=out[1],
        units=units.units,
        numerator=units.total(numerator),
        denominator=units.total(denominator),
    )


def ratio_from_arrays(y: NDArray[Any], n: NDArray[Any]) -> tuple[float, float] | None:
    """The same from per-unit arrays (tests, simulations)."""
    y = np.asarray(y, dtype=float)
    n = np.asarray(n, dtype=float)
    return ratio_from_sums(
        len(y), float(y.sum()), float(n.sum()), float(y @ y), float(n @ n), float(y @ n)
    )


def ratio_from_sums_np(
    k: NDArray[Any],
    sy: NDArray[Any],
    sn: NDArray[Any],
    syy: NDArray[Any],
    snn: NDArray[Any],
    syn: NDArray[Any],
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Vectorised `ratio_from_sums`; entries without enough data are NaN (callers mask them)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (k >= 2) & (sn > 0)
        kk = np.where(ok, k, np.nan)
        my, mn = sy / kk, sn / kk
        vy = (syy - kk * my * my) / (kk - 1)
        vn = (snn - kk * mn * mn) / (kk - 1)
        cyn = (syn - kk * my * mn) / (kk - 1)
        r = sy / np.where(ok, sn, np.nan)
        var = np.maximum((vy - 2 * r * cyn + r * r * vn) / (kk * mn * mn), 0.0)
    return r, var
