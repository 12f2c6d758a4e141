"""Sound judgement on thin or rare data (issue 16): promotion needs every guardrail shown
non-inferior, a healthy error rate with zero events can be shown so, and no rule acts before
each arm has the minimum evidence (units with data for the metric)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from analysis.guardrails import evaluate
from analysis.metrics import compare, metric, variance_floor
from analysis.policy import decide
from analysis.types import (
    ArmSnapshot,
    Estimate,
    ExperimentSnapshot,
    GuardrailSpec,
    Policy,
    StepState,
    UnitSums,
)

STEPS = [5.0, 10.0, 25.0, 50.0, 100.0]
NOW = 10_000.0


def unit_sums(fields: dict[str, np.ndarray]) -> UnitSums:
    """The sums the gateway keeps, from per-unit totals (requests first)."""
    n = fields["requests"]
    s1 = {k: float(v.sum()) for k, v in fields.items()}
    s2 = {k: float(v @ v) for k, v in fields.items()}
    cross = {f"{k}|requests": float(v @ n) for k, v in fields.items() if k != "requests"}
    if "votes" in fields:
        cross["fb:thumbs_up|votes"] = float(fields["fb:thumbs_up"] @ fields["votes"])
    nonzero = {d: int((fields[d] != 0).sum()) for d in ("requests", "votes") if d in fields}
    return UnitSums(units=len(n), s1=s1, s2=s2, cross=cross, nonzero=nonzero)


def snapshot(control: UnitSums, treatment: UnitSums, share: float = 50) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=share, taken_at=NOW,
        control=ArmSnapshot(units=control), treatment=ArmSnapshot(units=treatment),
    )  # fmt: skip


def arm(rng: np.random.Generator, units: int, *, up: float = 0.7, err: float = 0.01,
        vote_rate: float = 1.0) -> UnitSums:  # fmt: skip
    n = (1 + rng.poisson(3, units)).astype(float)
    votes = rng.binomial(n.astype(int), vote_rate).astype(float)
    return unit_sums({
        "requests": n,
        "votes": votes,
        "fb:thumbs_up": rng.binomial(votes.astype(int), up).astype(float),
        "errors": rng.binomial(n.astype(int), err).astype(float),
        "latency_ms": n * 200 * rng.lognormal(0, 0.1, units),
        "cost_usd": n * 1e-4 * rng.lognormal(0, 0.1, units),
    })  # fmt: skip


def run(share: float, c: UnitSums, t: UnitSums, **policy: Any) -> Any:
    pol = Policy(min_units_per_arm=policy.pop("min_units", 100), min_step_seconds=60, **policy)
    step = StepState(share=share, started_at=NOW - 3600)
    return decide(pol, snapshot(c, t, share), step, NOW, STEPS)


def test_zero_errors_in_5000_requests_is_non_inferior_to_a_1_point_margin() -> None:
    ones = np.ones(5000)
    zero = unit_sums({"requests": ones, "errors": np.zeros(5000)})
    g = evaluate(snapshot(zero, zero), "error_rate", 0.01)
    assert g.verdict == "non_inferior", g.reason
    assert g.test.interval is not None and g.test.interval.high < 0.005
    # one request each is not enough to show anything
    few = unit_sums({"requests": np.ones(30), "errors": np.zeros(30)})
    assert evaluate(snapshot(few, few), "error_rate", 0.01).verdict == "inconclusive"


def test_the_floor_is_the_smoothed_binomial_variance_and_only_for_proportions() -> None:
    est = Estimate(value=0.0, variance=0.0, units=5000, numerator=0, denominator=5000)
    p = 1 / 5002
    assert variance_floor(metric("error_rate"), est) == pytest.approx(p * (1 - p) / 5000)
    assert variance_floor(metric("latency_ms"), est) == 0.0
    assert metric("csat_rate").proportion and not metric("cost_per_request").proportion


def test_two_treatment_users_with_five_thumbs_down_give_hold() -> None:
    rng = np.random.default_rng(3)
    n = (1 + rng.poisson(3, 60)).astype(float)
    up = rng.binomial(n.astype(int), 0.9).astype(float)
    control = unit_sums({"requests": n, "votes": n, "fb:thumbs_up": up})
    two = np.array([3.0, 2.0])
    treatment = unit_sums({"requests": two, "votes": two, "fb:thumbs_up": np.zeros(2)})
    d = run(5, control, treatment, guardrails=[])
    assert d.action == "hold", d.reasons
    assert d.primary is not None and d.primary.test.status == "insufficient_data"
    assert "units with votes" in d.primary.test.reason
    # the guardrails wait for the same evidence
    d = run(5, control, treatment)
    assert d.action == "hold" and all(g.verdict == "insufficient_data" for g in d.guardrails)


def test_units_that_never_voted_are_not_evidence() -> None:
    rng = np.random.default_rng(4)
    # 500 units per arm, but only about 3 % of them voted (15 voters each)
    c, t = arm(rng, 500, vote_rate=0.008), arm(rng, 500, up=0.2, vote_rate=0.008)
    assert min(c.with_data("votes"), t.with_data("votes")) < 20
    result = compare(snapshot(c, t), "thumbs_up_rate", min_units=20)
    assert result.test.status == "insufficient_data"
    assert run(10, c, t).action != "rollback"


def test_promotion_needs_every_guardrail_non_inferior() -> None:
    rng = np.random.default_rng(5)
    # a clear winner on the primary metric whose error rate is 1.5 points worse: the
    # guardrail (margin 1 point) is not shown breached at this size, but neither within
    c, t = arm(rng, 1500, up=0.6, err=0.01), arm(rng, 1500, up=0.8, err=0.025)
    d = run(50, c, t, guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)])
    assert d.primary is not None and d.primary.test.significant
    assert d.guardrails[0].verdict != "non_inferior"
    assert d.action in ("hold", "rollback"), d.reasons
    if d.action == "hold":
        assert "guardrails not yet shown non-inferior: error_rate" in d.reasons[0]
    # a guardrail without any data blocks promotion too
    none = run(50, c, t, guardrails=[GuardrailSpec(metric="ttft_ms", margin=0.1, relative=True)])
    assert none.action == "hold" and none.guardrails[0].verdict == "insufficient_data"
    # the same winner with a healthy error rate is promoted
    ok = run(50, arm(rng, 1500, up=0.6, err=0.0), arm(rng, 1500, up=0.8, err=0.0),
             guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)])  # fmt: skip
    assert ok.action == "promote", ok.reasons


def test_all_events_is_tested_with_the_floor_not_refused() -> None:
    # every request of 5 units failed, in both arms: no unit-level variance, but a floored one
    units = UnitSums(units=5, s1={"errors": 5, "requests": 5}, s2={"errors": 5, "requests": 5},
                     cross={"errors|requests": 5}, nonzero={"requests": 5})  # fmt: skip
    for sequential in (True, False):
        result = compare(snapshot(units, units), "error_rate", sequential=sequential)
        assert result.test.status == "ok" and result.test.interval is not None
        assert result.test.interval.low < 0 < result.test.interval.high
        assert "nan" not in result.model_dump_json().lower()
    assert evaluate(snapshot(units, units), "error_rate", 0.01).verdict == "inconclusive"


def test_aggregates_from_before_the_count_count_every_unit() -> None:
    old = UnitSums(units=40, s1={"requests": 80.0})
    assert old.with_data("votes") == 40 and old.with_data("requests") == 40
    new = UnitSums(units=40, s1={"requests": 80.0}, nonzero={"requests": 40})
    assert new.with_data("votes") == 0 and UnitSums().with_data("requests") == 0


def test_a_mean_without_spread() -> None:
    ones = np.ones(50)
    free = unit_sums({"requests": ones, "cost_usd": np.zeros(50)})
    # cost without prices: 0 in both arms, exactly; within any relative margin
    g = evaluate(snapshot(free, free), "cost_per_request", 0.25, relative=True)
    assert g.verdict == "non_inferior", g.reason
    # one arm without spread borrows the other's dispersion (not a zero-variance arm)
    rng = np.random.default_rng(6)
    varied = unit_sums({"requests": ones, "cost_usd": rng.lognormal(0, 0.5, 50)})
    flat = unit_sums({"requests": ones, "cost_usd": np.full(50, 1.0)})
    c = compare(snapshot(varied, flat), "cost_per_request")
    assert c.test.status == "ok" and c.control is not None
    assert c.test.interval is not None
    width = c.test.interval.high - c.test.interval.low
    both = compare(snapshot(varied, varied), "cost_per_request").test.interval
    assert both is not None and width == pytest.approx(both.high - both.low)
