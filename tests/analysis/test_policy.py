"""Each policy rule fires on a constructed snapshot, and only then; decisions carry numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from analysis.policy import decide
from analysis.report import build_report
from analysis.report_html import render_html
from analysis.stats.bernoulli import latency_bucket
from analysis.types import (
    ArmSnapshot,
    ArmTotals,
    ExperimentSnapshot,
    GuardrailSpec,
    Policy,
    StepState,
    UnitSums,
)

STEPS = [5.0, 10.0, 25.0, 50.0, 100.0]
NOW = 10_000.0


def _arm(rng: np.random.Generator, units: int, *, up: float = 0.7, err: float = 0.01,
         latency: float = 200.0, cost: float = 1e-4, moved_in: int = 0) -> ArmSnapshot:  # fmt: skip
    n = (1 + rng.poisson(3, units)).astype(float)
    fields: dict[str, np.ndarray] = {
        "requests": n,
        "votes": n,
        "fb:thumbs_up": rng.binomial(n.astype(int), up).astype(float),
        "errors": rng.binomial(n.astype(int), err).astype(float),
        "latency_ms": n * latency * rng.lognormal(0, 0.1, units),
        "cost_usd": n * cost,
        "fb:escalation": rng.binomial(n.astype(int), 0.02).astype(float),
    }
    s1 = {k: float(v.sum()) for k, v in fields.items()}
    s2 = {k: float(v @ v) for k, v in fields.items()}
    cross = {f"{k}|requests": float(v @ n) for k, v in fields.items() if k != "requests"}
    cross["fb:thumbs_up|votes"] = float(fields["fb:thumbs_up"] @ n)
    lat = fields["latency_ms"]
    # per-request latencies for the p95 guardrail's histogram
    each = rng.lognormal(np.log(latency), 0.3, int(n.sum()))
    keys, counts = np.unique([latency_bucket(v) for v in each], return_counts=True)
    totals = ArmTotals(
        requests=int(n.sum()), latency_ms_sum=float(lat.sum()),
        latency_ms_sq_sum=float(((lat / n) ** 2 * n).sum() * 1.05),
        latency_histogram={int(k): int(c) for k, c in zip(keys, counts, strict=True)},
    )  # fmt: skip
    return ArmSnapshot(
        totals=totals,
        units=UnitSums(
            units=units,
            moved_in=moved_in,
            s1=s1,
            s2=s2,
            cross=cross,
            nonzero={"requests": units, "votes": units},
        ),
    )


def _snap(share: float, control: ArmSnapshot, treatment: ArmSnapshot) -> ExperimentSnapshot:
    return ExperimentSnapshot(experiment="e", route="r", treatment_percent=share, taken_at=NOW,
                              control=control, treatment=treatment)  # fmt: skip


def _decide(share: float, c: ArmSnapshot, t: ArmSnapshot, **policy: Any) -> Any:
    pol = Policy(min_units_per_arm=policy.pop("min_units", 100),
                 min_step_seconds=policy.pop("min_step", 60), **policy)  # fmt: skip
    step = StepState(share=share, started_at=policy.get("started", NOW - 3600))
    return decide(pol, _snap(share, c, t), step, NOW, STEPS)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


def test_advance_when_minimums_met_and_nothing_worse(rng: np.random.Generator) -> None:
    d = _decide(10, _arm(rng, 9000), _arm(rng, 1000))
    assert d.action == "advance", d.reasons
    assert "10 % -> 25 %" in d.reasons[0]
    assert d.units["treatment_in_step"] == 1000 and d.primary is not None
    assert all(g.verdict != "inferior" for g in d.guardrails)


def test_hold_until_minimums(rng: np.random.Generator) -> None:
    d = _decide(10, _arm(rng, 450), _arm(rng, 50))
    assert d.action == "hold" and "50 of 100 new units" in d.reasons[0]
    step = StepState(share=10, started_at=NOW - 10)
    d = decide(Policy(min_units_per_arm=100, min_step_seconds=60),
               _snap(10, _arm(rng, 9000), _arm(rng, 1000)), step, NOW, STEPS)  # fmt: skip
    assert d.action == "hold" and "10 of 60 s" in d.reasons[0]


def test_rollback_when_primary_is_worse(rng: np.random.Generator) -> None:
    d = _decide(10, _arm(rng, 9000), _arm(rng, 1000, up=0.55))
    assert d.action == "rollback"
    assert "thumbs_up_rate is significantly worse" in d.reasons[0]
    assert d.primary is not None and d.primary.test.interval is not None
    assert d.primary.test.interval.high < 0


def test_rollback_on_guardrail_breach(rng: np.random.Generator) -> None:
    d = _decide(10, _arm(rng, 9000), _arm(rng, 1000, err=0.15))
    assert d.action == "rollback" and "guardrail error_rate breached" in d.reasons[0]
    slow = _decide(10, _arm(rng, 9000), _arm(rng, 1000, latency=400))
    assert slow.action == "rollback" and "latency_p95_ms" in slow.reasons[0]
    pricey = _decide(10, _arm(rng, 9000), _arm(rng, 1000, cost=2e-4))
    assert pricey.action == "rollback" and "cost_per_request" in pricey.reasons[0]


def test_pause_on_sample_ratio_mismatch(rng: np.random.Generator) -> None:
    d = _decide(10, _arm(rng, 9000), _arm(rng, 600))  # 6.3 % where 10 % is configured
    assert d.action == "pause" and "sample ratio mismatch" in d.reasons[0]
    assert d.srm is not None and d.srm.mismatch and d.srm.p_value is not None
    # units that moved arms because the share went up are not new arrivals
    moved = _decide(10, _arm(rng, 9000), _arm(rng, 1400, moved_in=400))
    assert moved.action == "advance", moved.reasons


def test_promote_at_the_last_step_only_when_better(rng: np.random.Generator) -> None:
    better = _decide(50, _arm(rng, 3000), _arm(rng, 3000, up=0.78))
    assert better.action == "promote" and "significantly better" in better.reasons[0]
    same = _decide(50, _arm(rng, 3000), _arm(rng, 3000))
    assert same.action == "hold" and "last step" in same.reasons[0]
    lenient = _decide(50, _arm(rng, 3000), _arm(rng, 3000), promote_when="non_inferior",
                      non_inferiority_margin=0.03)  # fmt: skip
    assert lenient.action == "promote" and "non-inferior" in lenient.reasons[0]
    # below the last step, a better treatment advances rather than skipping steps
    assert _decide(10, _arm(rng, 9000), _arm(rng, 1000, up=0.8)).action == "advance"


def test_direction_and_custom_guardrails(rng: np.random.Generator) -> None:
    # lower is better for error rate as a primary metric
    d = _decide(50, _arm(rng, 3000, err=0.05), _arm(rng, 3000, err=0.01),
                primary_metric="error_rate", guardrails=[])  # fmt: skip
    assert d.action == "promote"
    none = _decide(10, _arm(rng, 9000), _arm(rng, 1000, err=0.15), guardrails=[
        GuardrailSpec(metric="escalation_rate", margin=0.02)])  # fmt: skip
    assert none.action == "advance"  # the error-rate guardrail was configured away


def test_insufficient_data_holds(rng: np.random.Generator) -> None:
    d = _decide(5, ArmSnapshot(), ArmSnapshot())
    assert d.action == "hold"
    assert d.primary is not None and d.primary.test.status == "insufficient_data"
    assert "nan" not in d.model_dump_json().lower()


def test_primary_metric_tested_at_primary_alpha(rng: np.random.Generator) -> None:
    """The primary metric's two-sided test runs at `primary_alpha`, by default half the policy's
    alpha (the false-action budget); the guardrails keep alpha. A lift whose always-valid
    p-value lies between the two is promoted only when the primary gets the whole alpha."""
    c, t = _arm(rng, 3000), _arm(rng, 3000, up=0.722)
    whole = _decide(50, c, t, primary_alpha=0.05)
    assert whole.primary is not None and 0.025 < whole.primary.test.p_value < 0.05
    assert whole.action == "promote" and whole.primary.test.alpha == 0.05
    default = _decide(50, c, t)
    assert default.primary is not None and default.primary.test.alpha == 0.025
    assert default.action == "hold" and "significantly better" in default.reasons[0]
    assert default.primary.test.p_value == whole.primary.test.p_value  # same data, same p
    assert [g.test.alpha for g in default.guardrails if g.test is not None] == [0.05] * 4
    assert Policy(alpha=0.1).primary_level == 0.05
    # the report tests the primary metric at the controller's level (one truth)
    cases = (
        ({}, "no significant difference", "97.5 %"),
        ({"primary_alpha": 0.05}, "better", "95 %"),
    )
    for policy, verdict, level in cases:
        experiment = {"state": "running", "policy": policy, "ramp_steps": STEPS,
                      "control": {"model": "base"}, "treatment": {"model": "v2"}}  # fmt: skip
        rep = build_report(experiment, _snap(50, c, t), [], [], NOW)
        row, guard = rep.metrics[0], rep.metrics[1]
        assert row.role == "primary" and row.verdict == verdict, row
        # each interval is shown with its own level: the guardrails' stays 95 %
        page = render_html(rep)
        assert f"always-valid {level} interval" in page and f"({level})" in page
        assert guard.role == "guardrail" and guard.level == 0.95
    assert Policy(alpha=0.1, primary_alpha=0.01).primary_level == 0.01


def test_primary_alpha_cannot_exceed_the_budget() -> None:
    with pytest.raises(ValueError, match="must not exceed alpha"):
        Policy(alpha=0.01, primary_alpha=0.2)
    assert Policy(alpha=0.05, primary_alpha=0.05).primary_level == 0.05
