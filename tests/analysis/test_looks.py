"""The look memory (analysis/looks.py): the running minimum p-value and the intersected intervals
kept across looks, mixing scales fixed at the first look with evidence, guardrails on means
tuned to their margin, and the relative lift's own variance."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from analysis.looks import current, key
from analysis.metrics import compare, difference_test, estimates, metric
from analysis.policy import decide
from analysis.stats.sequential import half_width, log_mixture_lr
from analysis.types import (
    ArmSnapshot,
    ExperimentSnapshot,
    GuardrailSpec,
    LookMemory,
    MetricLooks,
    Policy,
    StepState,
    UnitSums,
)

STEPS = [5.0, 10.0, 25.0, 50.0, 100.0]
STEP = StepState(share=50.0, started_at=0.0)
ROOT = Path(__file__).resolve().parents[2]


def _arm(
    rng: np.random.Generator, units: int, *, latency: float = 200.0, cost: float = 1e-4
) -> ArmSnapshot:
    n = (1 + rng.poisson(3, units)).astype(float)
    fields = {
        "requests": n,
        "votes": n,
        "fb:thumbs_up": rng.binomial(n.astype(int), 0.7).astype(float),
        "errors": np.zeros(units),
        "latency_ms": n * latency * rng.lognormal(0, 0.3, units),
        "cost_usd": n * cost * rng.lognormal(0, 0.3, units),
    }
    return ArmSnapshot(
        units=UnitSums(
            units=units,
            s1={k: float(v.sum()) for k, v in fields.items()},
            s2={k: float(v @ v) for k, v in fields.items()},
            cross={
                **{f"{k}|requests": float(v @ n) for k, v in fields.items() if k != "requests"},
                "fb:thumbs_up|votes": float(fields["fb:thumbs_up"] @ n),
            },
            nonzero={"requests": units, "votes": units},
        )
    )


def _snap(control: ArmSnapshot, treatment: ArmSnapshot) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=50.0, taken_at=0.0,
        control=control, treatment=treatment,
    )  # fmt: skip


def _policy(**kw: object) -> Policy:
    return Policy.model_validate({"primary_metric": "latency_ms", "guardrails": [], **kw})


def _fresh_p(snap: ExperimentSnapshot, name: str, tau: float) -> float:
    """This look's mSPRT p-value alone, computed from the arms' delta-method estimates."""
    c, t = estimates(metric(name), snap.control, snap.treatment)
    assert c is not None and t is not None
    llr = log_mixture_lr(t.value - c.value, c.variance + t.variance, tau)
    return min(1.0, math.exp(-llr)) if llr > 0 else 1.0


def test_running_minimum_and_intersection_are_kept_across_looks() -> None:
    rng = np.random.default_rng(1)
    first = _snap(_arm(rng, 400), _arm(rng, 400, latency=185.0))
    later = _snap(_arm(rng, 400), _arm(rng, 400, latency=193.0))
    one = decide(_policy(), first, STEP, 100.0, STEPS)
    assert one.looks is not None and one.primary is not None
    two = decide(_policy(), later, STEP, 200.0, STEPS, looks=one.looks)
    assert two.primary is not None
    a, b = one.primary.test, two.primary.test
    assert a.p_value is not None and a.interval is not None and b.interval is not None
    tau = one.looks.tests["latency_ms"].tau
    assert _fresh_p(later, "latency_ms", tau) > a.p_value  # alone, the later look shows less
    assert b.p_value == a.p_value and b.significant
    assert a.interval.low <= b.interval.low <= b.interval.high <= a.interval.high
    assert b.interval.high < 0  # still shown lower (better)
    assert two.looks is not None and two.looks.tests["latency_ms"].p_value == a.p_value
    # without the memory the same look is judged on its own
    alone = decide(_policy(), later, STEP, 200.0, STEPS).primary
    assert alone is not None and alone.test.p_value == pytest.approx(
        _fresh_p(later, "latency_ms", 0.1 * alone.control.value)  # type: ignore[union-attr]
    )


def test_memory_starts_afresh_for_another_target_or_a_resume() -> None:
    kept = LookMemory(
        target="v1", resumed_at=0.0, tests={"latency_ms": MetricLooks(tau=20.0, p_value=0.01)}
    )
    assert current(kept, "v1", 0.0) is kept
    assert current(kept, "v2", 0.0).tests == {}  # a swap
    assert current(kept, "v1", 123.0).tests == {}  # a resume
    assert current(None, "v1", 0.0) == LookMemory(target="v1")


def test_mixing_scale_is_fixed_at_the_first_look_with_evidence() -> None:
    rng = np.random.default_rng(2)
    policy = _policy()
    thin = decide(policy, _snap(_arm(rng, 5), _arm(rng, 5)), STEP, 50.0, STEPS)
    assert thin.looks is not None and thin.looks.tests == {}  # no evidence: nothing fixed
    first = _snap(_arm(rng, 300), _arm(rng, 300))
    one = decide(policy, first, STEP, 100.0, STEPS, looks=thin.looks)
    assert one.looks is not None and one.primary is not None and one.primary.control
    assert one.looks.tests["latency_ms"].tau == pytest.approx(0.1 * one.primary.control.value)
    # the control's latency moves by half: the scale stays what it was
    later = _snap(_arm(rng, 300, latency=300.0), _arm(rng, 300, latency=280.0))
    two = decide(policy, later, STEP, 200.0, STEPS, looks=one.looks)
    assert two.looks is not None and two.primary is not None
    tau = one.looks.tests["latency_ms"].tau
    assert two.looks.tests["latency_ms"].tau == tau
    assert one.primary.test.p_value is not None
    expected = min(one.primary.test.p_value, _fresh_p(later, "latency_ms", tau))
    assert two.primary.test.p_value == pytest.approx(expected, rel=1e-9)
    assert expected < 0.5  # and the scale matters:
    assert expected != pytest.approx(_fresh_p(later, "latency_ms", 0.1 * 300), rel=1e-2)


def test_a_guardrail_on_a_mean_uses_its_margin_as_mixing_scale() -> None:
    rng = np.random.default_rng(3)
    policy = _policy(
        primary_metric="thumbs_up_rate",
        guardrails=[
            {"metric": "cost_per_request", "margin": 0.25, "relative": True},
            {"metric": "latency_ms", "margin": 50.0},
        ],
    )
    snap = _snap(_arm(rng, 500), _arm(rng, 500, latency=215.0, cost=1.1e-4))
    d = decide(policy, snap, STEP, 100.0, STEPS)
    assert d.looks is not None
    cost, latency = d.guardrails
    c, _ = estimates(metric("cost_per_request"), snap.control, snap.treatment)
    assert c is not None
    spec = GuardrailSpec(metric="cost_per_request", margin=0.25, relative=True)
    kept = d.looks.tests[key("cost_per_request", spec)]
    assert kept.tau == pytest.approx(0.25 * c.value) and kept.relative_tau == pytest.approx(0.25)
    assert cost.test.p_value == pytest.approx(_fresh_p(snap, "cost_per_request", 0.25 * c.value))
    assert latency.test.p_value == pytest.approx(_fresh_p(snap, "latency_ms", 50.0))
    assert d.looks.tests[key("latency_ms", policy.guardrails[1])].tau == 50.0
    # the metric's own scale (10 % of control, 20 ms) would give another answer
    assert latency.test.p_value != pytest.approx(_fresh_p(snap, "latency_ms", 20.0), rel=1e-3)


def _means(rng: np.random.Generator, reps: int, units: int, mean: float) -> np.ndarray:
    """Per-unit (requests, summed latency) of `reps` arms: clustered, a constant CV."""
    n = 1 + rng.poisson(3, (reps, units))
    return np.stack([n, n * mean * rng.lognormal(0, 0.5, (reps, units))])


def _arm_of(data: np.ndarray) -> ArmSnapshot:
    n, y = data
    return ArmSnapshot(
        units=UnitSums(
            units=len(n), s1={"requests": n.sum(), "latency_ms": y.sum()},
            s2={"requests": float(n @ n), "latency_ms": float(y @ y)},
            cross={"latency_ms|requests": float(y @ n)}, nonzero={"requests": len(n)},
        )
    )  # fmt: skip


def test_relative_intervals_carry_the_control_variance() -> None:
    """A 25 % higher latency, 1,000 control units and 4,000 treatment units: the spread of the
    ratio over 4,000 simulated experiments sets the relative intervals' width (the delta
    method, control variance included); the interval of the difference over the control value
    is too narrow."""
    rng = np.random.default_rng(4)
    reps = 4000
    c, t = _means(rng, reps, 1000, 200.0), _means(rng, reps, 4000, 250.0)
    ratio = (t[1].sum(1) / t[0].sum(1)) / (c[1].sum(1) / c[0].sum(1)) - 1
    var_sim = float(ratio.var(ddof=1))
    tau = 0.1
    widths, fixed_cover, old = [], [], []
    for i in range(30):
        snap = _snap(_arm_of(c[:, i]), _arm_of(t[:, i]))
        live = compare(snap, "latency_ms", relative_tau=tau).test
        assert live.relative_interval is not None and live.interval is not None
        widths.append((live.relative_interval.high - live.relative_interval.low) / 2)
        ce, te = estimates(metric("latency_ms"), snap.control, snap.treatment)
        assert ce is not None and te is not None
        old.append(half_width(ce.variance + te.variance, tau * ce.value, 0.05) / ce.value)
    for i in range(reps // 2):  # the fixed-horizon interval covers the true lift in ~95 %
        ce, te = estimates(metric("latency_ms"), _arm_of(c[:, i]), _arm_of(t[:, i]))
        assert ce is not None and te is not None
        ci = difference_test(ce, te).relative_interval
        assert ci is not None
        fixed_cover.append(ci.low <= 0.25 <= ci.high)
    expected = half_width(var_sim, tau, 0.05)
    assert float(np.mean(widths)) == pytest.approx(expected, rel=0.05)
    assert float(np.mean(old)) < 0.9 * expected  # dividing by the control value alone
    assert float(np.mean(fixed_cover)) == pytest.approx(0.95, abs=0.016)


def test_the_statistics_docs_name_only_modules_the_product_uses() -> None:
    """Every analysis.stats module the statistics page cites exists and is used outside the
    tests (the page once described request-level tests that nothing ran)."""
    text = (ROOT / "docs/statistics.md").read_text()
    cited = set(re.findall(r"analysis[./]stats[./](\w+)", text)) - {"py"}
    assert cited
    code = "".join(
        p.read_text() for d in ("analysis", "router") for p in (ROOT / d).rglob("*.py")
    )  # fmt: skip
    for mod in cited:
        assert (ROOT / "analysis/stats" / f"{mod}.py").exists(), mod
        assert re.search(rf"analysis\.stats\.{mod}\b|analysis\.stats import .*\b{mod}\b", code), mod
