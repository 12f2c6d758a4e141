"""Estimates across periods (analysis/metrics.py `by_period`) and steps that end with a period
(analysis/steps.py): the inverse-variance combination of per-period differences, equal to the
pooled estimate with one period, unbiased by a drift that the pooled sums turn into a
difference during a ramp."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.metrics import compare, floored, metric
from analysis.stats.delta import ratio_estimate
from analysis.steps import is_current, next_step
from analysis.types import ArmSnapshot, ExperimentSnapshot, PeriodSums, StepState, UnitSums


def _units(votes: np.ndarray, ups: np.ndarray) -> UnitSums:
    """The sums over units of per-unit votes and thumbs-up (every request voted)."""
    return UnitSums(
        units=len(votes),
        s1={"requests": float(votes.sum()), "votes": float(votes.sum()),
            "fb:thumbs_up": float(ups.sum())},
        s2={"requests": float(votes @ votes), "votes": float(votes @ votes),
            "fb:thumbs_up": float(ups @ ups)},
        cross={"fb:thumbs_up|votes": float(ups @ votes),
               "fb:thumbs_up|requests": float(ups @ votes), "votes|requests": float(votes @ votes)},
        nonzero={"requests": int(np.count_nonzero(votes)), "votes": int(np.count_nonzero(votes))},
    )  # fmt: skip


def _arm(rng: np.random.Generator, n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    votes = (1 + rng.poisson(3, n)).astype(float)
    return votes, rng.binomial(votes.astype(int), p).astype(float)


def _add(a: UnitSums, b: UnitSums) -> UnitSums:
    """The sums of two disjoint sets of units."""

    def merged(x: dict[str, float], y: dict[str, float]) -> dict[str, float]:
        return {k: x.get(k, 0.0) + y.get(k, 0.0) for k in x.keys() | y.keys()}

    return UnitSums(
        units=a.units + b.units, s1=merged(a.s1, b.s1), s2=merged(a.s2, b.s2),
        cross=merged(a.cross, b.cross),
        nonzero={k: int(v) for k, v in merged(a.nonzero, b.nonzero).items()},  # type: ignore[arg-type]
    )  # fmt: skip


def _snapshot(periods: list[tuple[UnitSums, UnitSums]], share: float = 50.0) -> ExperimentSnapshot:
    c, t = periods[0]
    for pc, pt in periods[1:]:
        c, t = _add(c, pc), _add(t, pt)
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=share, taken_at=0.0,
        control=ArmSnapshot(units=c), treatment=ArmSnapshot(units=t),
        period=len(periods) - 1,
        periods=[PeriodSums(period=i, control=pc, treatment=pt)
                 for i, (pc, pt) in enumerate(periods)],
    )  # fmt: skip


@pytest.mark.parametrize("sequential", [True, False])
def test_one_period_is_the_pooled_estimate(sequential: bool) -> None:
    rng = np.random.default_rng(1)
    c, t = _units(*_arm(rng, 300, 0.6)), _units(*_arm(rng, 200, 0.65))
    with_period = _snapshot([(c, t)])
    without = with_period.model_copy(update={"periods": []})
    a = compare(with_period, "thumbs_up_rate", sequential=sequential, min_units=20)
    b = compare(without, "thumbs_up_rate", sequential=sequential, min_units=20)
    assert a == b and a.periods == [] and a.test.status == "ok"


@pytest.mark.parametrize("sequential", [True, False])
def test_periods_combine_by_inverse_variance(sequential: bool) -> None:
    rng = np.random.default_rng(2)
    parts = [(_units(*_arm(rng, 400, 0.6)), _units(*_arm(rng, 30, 0.62))),
             (_units(*_arm(rng, 300, 0.7)), _units(*_arm(rng, 150, 0.69))),
             (_units(*_arm(rng, 5, 0.7)), _units(*_arm(rng, 4, 0.7)))]  # fmt: skip
    snap = _snapshot(parts)
    got = compare(snap, "thumbs_up_rate", sequential=sequential, min_units=20)
    m = metric("thumbs_up_rate")
    w, d, cm = [], [], []
    for pc, pt in parts[:2]:  # the third has too few units with votes: skipped
        ce = floored(m, ratio_estimate(pc, m.numerator, m.denominator))  # type: ignore[arg-type]
        te = floored(m, ratio_estimate(pt, m.numerator, m.denominator))  # type: ignore[arg-type]
        w.append(1 / (ce.variance + te.variance))
        d.append(te.value - ce.value)
        cm.append(ce.value)
    diff = sum(wi * di for wi, di in zip(w, d, strict=True)) / sum(w)
    control = sum(wi * ci for wi, ci in zip(w, cm, strict=True)) / sum(w)
    assert got.test.difference == pytest.approx(diff, rel=1e-12)
    assert got.test.relative_lift == pytest.approx(diff / control, rel=1e-9)
    assert [p.period for p in got.periods] == [0, 1, 2]
    assert [p.weight for p in got.periods][2] == 0.0
    assert sum(p.weight for p in got.periods) == pytest.approx(1.0)
    assert got.periods[0].difference == pytest.approx(d[0])
    if not sequential:
        se = math.sqrt(1 / sum(w))
        assert got.test.interval.high - got.test.interval.low == pytest.approx(  # type: ignore[union-attr]
            2 * 1.959963984540054 * se, rel=1e-9)  # fmt: skip
    # the arms' displayed estimates stay the cumulative ones
    assert got.control.units == snap.control.units.units  # type: ignore[union-attr]


def test_a_drift_during_a_ramp_biases_only_the_pooled_estimate() -> None:
    """Both arms go from 60 % to 70 % thumbs-up while treatment's share goes 5 -> 50 %: the
    pooled difference is positive, each period's (and their combination) about 0."""
    rng = np.random.default_rng(3)
    early = (_units(*_arm(rng, 4000, 0.6)), _units(*_arm(rng, 210, 0.6)))
    late = (_units(*_arm(rng, 2000, 0.7)), _units(*_arm(rng, 2000, 0.7)))
    snap = _snapshot([early, late])
    combined = compare(snap, "thumbs_up_rate", sequential=False, min_units=20)
    pooled = compare(snap.model_copy(update={"periods": []}), "thumbs_up_rate",
                     sequential=False, min_units=20)  # fmt: skip
    assert pooled.test.difference > 0.04 and pooled.test.significant
    assert abs(combined.test.difference) < 0.01 and not combined.test.significant  # type: ignore[arg-type]


def test_a_new_period_ends_the_step() -> None:
    stored = StepState(share=10.0, started_at=0.0, period=2, index=3)
    assert is_current(stored, 10.0, 0.0, 2)
    assert not is_current(stored, 10.0, 0.0, 3)  # a treatment swap at the same share
    step = next_step(stored, share=10.0, resumed_at=0.0, control_units=50, treatment_units=7,
                     moved_in=0, now=100.0, period=3)  # fmt: skip
    assert (step.period, step.index, step.started_at) == (3, 4, 100.0)
    assert step.treatment_units_at_start == 7
    # a first evaluation in a later period: the units so far arrived in earlier ones
    first = next_step(None, share=10.0, resumed_at=0.0, control_units=50, treatment_units=7,
                      moved_in=0, now=100.0, period=1)  # fmt: skip
    assert first.control_units_at_start == 50
