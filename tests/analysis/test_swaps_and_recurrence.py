"""What the tests judge across periods (analysis/periods.py): after a treatment swap only the
new model's periods count, and users who recur across periods widen the combined variance."""

from __future__ import annotations

import numpy as np

from analysis.guardrails import evaluate
from analysis.metrics import by_period, compare, metric
from analysis.periods import add_units, clustering, judged
from analysis.types import ArmSnapshot, ExperimentSnapshot, PeriodSums, UnitSums
from tests.analysis.test_periods import _arm, _units


def _errors(rng: np.random.Generator, n: int, rate: float) -> UnitSums:
    """Units with 1 + Poisson(3) requests each, failing independently at `rate`."""
    req = (1 + rng.poisson(3, n)).astype(float)
    err = rng.binomial(req.astype(int), rate).astype(float)
    return UnitSums(
        units=n, s1={"requests": float(req.sum()), "errors": float(err.sum())},
        s2={"requests": float(req @ req), "errors": float(err @ err)},
        cross={"errors|requests": float(err @ req)},
        nonzero={"requests": n},
    )  # fmt: skip


def _swapped(periods: list[tuple[UnitSums, UnitSums]], since: int) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=50.0, taken_at=0.0,
        control=ArmSnapshot(units=add_units(c for c, _ in periods)),
        treatment=ArmSnapshot(units=add_units(t for _, t in periods)),
        period=len(periods) - 1, since_period=since,
        periods=[PeriodSums(period=i, control=c, treatment=t) for i, (c, t) in enumerate(periods)],
    )  # fmt: skip


def test_a_swapped_adapter_is_judged_on_its_own_periods() -> None:
    rng = np.random.default_rng(7)
    # the former adapter: 3,000 users per arm, 60 % vs 66 %; the new one: 250, 60 % vs 50 %
    old = (_units(*_arm(rng, 3000, 0.60)), _units(*_arm(rng, 3000, 0.66)))
    new = (_units(*_arm(rng, 250, 0.60)), _units(*_arm(rng, 250, 0.50)))
    mixed = compare(_swapped([old, new], since=0), "thumbs_up_rate")
    assert mixed.test.interval is not None and mixed.test.interval.low > 0  # "better": wrong
    own = compare(_swapped([old, new], since=1), "thumbs_up_rate")
    assert own.test.interval is not None and own.test.difference is not None
    assert own.test.difference < -0.05 and own.test.interval.low < 0
    assert own.treatment is not None and own.treatment.units == 250
    # a swap with no data yet on the new model: nothing to judge, whatever came before
    empty = compare(_swapped([old], since=1), "thumbs_up_rate")
    assert empty.test.status == "insufficient_data"


def test_a_swapped_adapters_guardrail_is_its_own() -> None:
    rng = np.random.default_rng(8)
    old = (_errors(rng, 20000, 0.01), _errors(rng, 20000, 0.01))
    new = (_errors(rng, 1000, 0.01), _errors(rng, 1000, 0.03))
    mixed = evaluate(_swapped([old, new], since=0), "error_rate", 0.01)
    assert mixed.verdict == "non_inferior"  # the former adapter's 20,000 users vouch: wrong
    own = evaluate(_swapped([old, new], since=1), "error_rate", 0.01)
    assert own.verdict != "non_inferior"


def test_the_view_after_a_swap_adds_up_the_new_periods() -> None:
    rng = np.random.default_rng(9)
    ps = [(_errors(rng, 100, 0.01), _errors(rng, 100, 0.02)) for _ in range(3)]
    view = judged(_swapped(ps, since=1))
    assert [p.period for p in view.periods] == [1, 2]
    assert view.treatment.units.units == 200
    want = ps[1][1].total("errors") + ps[2][1].total("errors")
    assert view.treatment.units.total("errors") == want
    assert judged(_swapped(ps, since=0)) == _swapped(ps, since=0)


def _recurring(rng: np.random.Generator, n: int, periods: int) -> ExperimentSnapshot:
    """An A/A where the same users, each with their own rate (uniform), vote in every period."""
    sides = []
    for _ in range(2):
        rate = rng.random(n)
        parts = []
        for _ in range(periods):
            votes = (1 + rng.poisson(3, n)).astype(float)
            parts.append((votes, rng.binomial(votes.astype(int), rate).astype(float)))
        sides.append(parts)
    per = [(_units(*sides[0][k]), _units(*sides[1][k])) for k in range(periods)]
    whole = [
        _units(sum(v for v, _ in sides[a]), sum(u for _, u in sides[a]))  # type: ignore[arg-type]
        for a in range(2)
    ]
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=50.0, taken_at=0.0,
        control=ArmSnapshot(units=whole[0]), treatment=ArmSnapshot(units=whole[1]),
        period=periods - 1,
        periods=[PeriodSums(period=i, control=c, treatment=t) for i, (c, t) in enumerate(per)],
    )  # fmt: skip


def test_recurring_users_widen_the_combined_variance() -> None:
    """sd of the z-statistic over A/A replications: 1 when the variance is right. Without the
    design effect across periods it is about 1.5 here (the same 400 users in 3 periods)."""
    rng = np.random.default_rng(10)
    m = metric("thumbs_up_rate")
    z_fixed, z_naive, effects = [], [], []
    for _ in range(300):
        snap = _recurring(rng, 400, 3)
        test = compare(snap, "thumbs_up_rate", sequential=False).test
        assert test.difference is not None and test.interval is not None
        se = (test.interval.high - test.interval.low) / (2 * 1.959964)
        z_fixed.append(test.difference / se)
        naive = by_period(m, snap, 2)
        assert naive is not None
        c, t, _ = naive
        z_naive.append((t.value - c.value) / np.sqrt(c.variance + t.variance))
        effects.append(clustering(m.numerator, m.denominator, snap))
    assert np.std(z_naive) > 1.3  # the problem is real in this model
    assert 0.85 < np.std(z_fixed) < 1.15
    assert np.median(effects) > 1.8
