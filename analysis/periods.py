"""What the tests judge when an experiment has periods (analysis/metrics.py `by_period`).

Two corrections to the per-period sums the gateway keeps (router/signals/lua.py):

- **A swapped adapter is judged on its own data.** `judged` gives the snapshot the tests use:
  the cumulative one while the treatment model is the one the experiment started with; after a
  swap (`since_period` > 0, router/control/periods.py) only the periods since, their unit-level
  sums added up and their latency histograms merged. The former adapter's data, however much
  of it there is, never decides about the new one, and the minimum evidence starts again.
- **Units that recur across periods.** The combination of per-period differences treats each
  period's units as independent of the others', but a user who returns in the next ramp step
  carries their own rate with them, so the periods' differences are positively correlated and
  1 / Σ w understates the variance. `clustering` measures it on the experiment's own data: the
  delta-method variance of the pooled difference clustered by unit (the cumulative sums) over
  the same variance clustered by unit *and period* (the per-period sums added up). Its ratio,
  at least 1, multiplies the combined variance (a design effect across periods).
"""

from __future__ import annotations

from collections.abc import Iterable

from analysis.stats.delta import ratio_estimate
from analysis.types import ArmSnapshot, ExperimentSnapshot, PeriodSums, UnitSums


def add_units(parts: Iterable[UnitSums]) -> UnitSums:
    """The sums over the unit-periods of several periods (a unit seen in two counts twice)."""
    units = moved = 0
    s1: dict[str, float] = {}
    s2: dict[str, float] = {}
    cross: dict[str, float] = {}
    nonzero: dict[str, int] = {}
    for p in parts:
        units += p.units
        moved += p.moved_in
        for src, dst in ((p.s1, s1), (p.s2, s2), (p.cross, cross)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0.0) + v
        for k, n in p.nonzero.items():
            nonzero[k] = nonzero.get(k, 0) + n
    return UnitSums(units=units, moved_in=moved, s1=s1, s2=s2, cross=cross, nonzero=nonzero)


def _merge(hists: Iterable[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, n in h.items():
            out[k] = out.get(k, 0) + n
    return out


def _arm(arm: ArmSnapshot, units: UnitSums, latency: dict[int, int]) -> ArmSnapshot:
    totals = arm.totals.model_copy(update={"latency_histogram": latency})
    return arm.model_copy(update={"units": units, "totals": totals})


def judged(snapshot: ExperimentSnapshot) -> ExperimentSnapshot:
    """The snapshot the tests judge: the periods of the current treatment model only."""
    if snapshot.since_period <= 0:
        return snapshot
    kept: list[PeriodSums] = [p for p in snapshot.periods if p.period >= snapshot.since_period]
    control = _arm(
        snapshot.control,
        add_units(p.control for p in kept),
        _merge(p.control_latency for p in kept),
    )
    treatment = _arm(
        snapshot.treatment,
        add_units(p.treatment for p in kept),
        _merge(p.treatment_latency for p in kept),
    )
    return snapshot.model_copy(update={"control": control, "treatment": treatment, "periods": kept})


def clustering(numerator: str, denominator: str, snapshot: ExperimentSnapshot) -> float:
    """The design effect across periods (module docstring) of Σ numerator / Σ denominator,
    measured on the whole experiment (also after a swap: how users recur does not depend on the
    adapter); 1 without two periods or when either variance is not positive."""
    if len(snapshot.periods) < 2:
        return 1.0
    total = 0.0
    split = 0.0
    for arm, parts in (
        (snapshot.control.units, [p.control for p in snapshot.periods]),
        (snapshot.treatment.units, [p.treatment for p in snapshot.periods]),
    ):
        whole = ratio_estimate(arm, numerator, denominator)
        pieces = ratio_estimate(add_units(parts), numerator, denominator)
        if whole is None or pieces is None:
            return 1.0
        total += whole.variance
        split += pieces.variance
    if total <= 0 or split <= 0:
        return 1.0
    return max(1.0, total / split)
