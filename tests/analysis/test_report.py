"""The report tells the controller's truth (issue 16, point 8): metrics tested from the policy's
`min_evidence_units`, the SRM check on the current ramp step as the controller runs it (never all
units so far against the current share), both arms of every guardrail, every share change from
the audit log on a time axis, adapter swaps marked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from analysis.report import build_report
from analysis.report_html import render_html
from analysis.stats.bernoulli import latency_bucket
from analysis.stats.srm import srm_test
from analysis.types import (
    ArmSnapshot,
    ArmTotals,
    ExperimentSnapshot,
    PeriodSums,
    StepState,
    UnitSums,
)
from router.cli.report import show

T0 = 1_750_000_000.0
NOW = T0 + 4 * 3600
POLICY = {
    "min_units_per_arm": 50,
    "min_step_seconds": 60.0,
    "guardrails": [
        {"metric": "error_rate", "margin": 0.01},
        {"metric": "latency_p95_ms", "margin": 0.25, "relative": True},
    ],
}


def _arm(rng: np.random.Generator, units: int, moved_in: int = 0) -> ArmSnapshot:
    n = (1 + rng.poisson(3, units)).astype(float)
    fields = {
        "requests": n,
        "votes": n,
        "fb:thumbs_up": rng.binomial(n.astype(int), 0.7).astype(float),
        "errors": rng.binomial(n.astype(int), 0.01).astype(float),
        "latency_ms": n * 200 * rng.lognormal(0, 0.1, units),
        "cost_usd": n * 1e-4,
    }
    lat = fields["latency_ms"]
    each = rng.lognormal(np.log(200), 0.1, int(n.sum()))  # per request, for the histogram
    keys, counts = np.unique([latency_bucket(v) for v in each], return_counts=True)
    return ArmSnapshot(
        totals=ArmTotals(
            requests=int(n.sum()), errors=int(fields["errors"].sum()),
            latency_ms_sum=float(lat.sum()), latency_ms_sq_sum=float(((lat / n) ** 2 * n).sum()),
            latency_histogram={int(k): int(c) for k, c in zip(keys, counts, strict=True)},
        ),
        units=UnitSums(
            units=units, moved_in=moved_in,
            s1={k: float(v.sum()) for k, v in fields.items()},
            s2={k: float(v @ v) for k, v in fields.items()},
            cross={
                **{f"{k}|requests": float(v @ n) for k, v in fields.items() if k != "requests"},
                "fb:thumbs_up|votes": float(fields["fb:thumbs_up"] @ n),
            },
            nonzero={"requests": units, "votes": units},
        ),
    )  # fmt: skip


Change = tuple[float, str, str, float | None, float]  # ts, actor, action, before, after


def _audit(*changes: Change, swap: float | None = None) -> list[dict[str, Any]]:
    rows = [
        {
            "ts": t, "actor": actor, "action": action, "reason": "",
            "before": None if before is None else {"treatment_percent": before},
            "after": {"treatment_percent": after},
        }
        for t, actor, action, before, after in changes
    ]  # fmt: skip
    if swap is not None:
        rows.append({
            "ts": swap, "actor": "alice", "action": "swap", "reason": "",
            "before": {"treatment_percent": 50.0, "treatment": {"model": "v1"}},
            "after": {"treatment_percent": 50.0, "treatment": {"model": "v2"}},
        })  # fmt: skip
    return sorted(rows, key=lambda r: float(r["ts"]))


# 20 -> 25 -> 30 by hand, then `advance` to 50: units counted per step (correct traffic)
RAMP = [(20.0, 1000), (25.0, 1000), (30.0, 1000), (50.0, 1000)]
CHANGES = [
    (T0, "alice", "create", None, 20.0),
    (T0 + 3600, "alice", "set-share", 20.0, 25.0),
    (T0 + 7200, "alice", "set-share", 25.0, 30.0),
    (T0 + 9000, "bob", "pause", 30.0, 30.0),  # not a share change
    (T0 + 10800, "alice", "advance", 30.0, 50.0),
]


def _ramped(rng: np.random.Generator) -> tuple[ExperimentSnapshot, dict[str, int]]:
    c = t = 0
    counts: dict[str, int] = {}
    for share, arrivals in RAMP:
        counts = {"control": c, "treatment": t}  # at the start of the last step
        t += round(arrivals * share / 100)
        c += arrivals - round(arrivals * share / 100)
    snap = ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=50.0, taken_at=NOW,
        control=_arm(rng, c), treatment=_arm(rng, t),
    )  # fmt: skip
    return snap, counts


def _experiment(**extra: Any) -> dict[str, Any]:
    return {
        "state": "running", "policy": POLICY, "ramp_steps": [20.0, 25.0, 30.0, 50.0, 100.0],
        "control": {"model": "base"}, "treatment": {"model": "v2"}, **extra,
    }  # fmt: skip


def test_the_scenario_would_mismatch_on_all_units_against_the_current_share() -> None:
    snap, _ = _ramped(np.random.default_rng(1))
    old = srm_test(snap.control.units.units, snap.treatment.units.units, 0.5)
    assert old.mismatch  # what the report used to print


def test_manual_ramp_without_a_controller_step_prints_no_mismatch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    snap, _ = _ramped(np.random.default_rng(1))
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES), NOW, step=None)
    assert not rep.srm.mismatch and rep.srm.status == "insufficient_data"
    assert rep.step is not None and rep.step.share == 50 and rep.step.started_at == T0 + 10800
    assert "not evaluated" in rep.step_note
    show(rep.model_dump(mode="json"))
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "MISMATCH" not in out and "SRM: insufficient data" in out


def test_srm_is_the_controllers_on_the_current_step() -> None:
    snap, counts = _ramped(np.random.default_rng(1))
    step = StepState(
        share=50.0, started_at=T0 + 10800,
        control_units_at_start=counts["control"], treatment_units_at_start=counts["treatment"],
    )  # fmt: skip
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES), NOW, step=step)
    assert rep.srm.status == "ok" and not rep.srm.mismatch
    assert rep.srm.control_units + rep.srm.treatment_units == 1000  # the step's units only
    assert rep.step == step and rep.step_note == ""
    assert rep.outlook is not None and rep.outlook.srm == rep.srm  # the policy's own check
    # a step stored for an older share: the controller starts a new one at its next look
    stale = step.model_copy(update={"share": 30.0})
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES), NOW, step=stale)
    assert rep.srm.status == "insufficient_data" and rep.step is not None
    assert rep.step.control_units_at_start == snap.control.units.units


def test_a_split_broken_in_the_current_step_is_still_a_mismatch() -> None:
    snap, counts = _ramped(np.random.default_rng(1))
    # 300 more control units in the step than the traffic had: 800 of 1300 where 50 % is set
    step = StepState(
        share=50.0, started_at=T0 + 10800,
        control_units_at_start=counts["control"] - 300,
        treatment_units_at_start=counts["treatment"],
    )  # fmt: skip
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES), NOW, step=step)
    assert rep.srm.mismatch


def test_an_unchanged_share_tests_every_unit() -> None:
    rng = np.random.default_rng(2)
    snap = ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=20.0, taken_at=NOW,
        control=_arm(rng, 800), treatment=_arm(rng, 200),
    )  # fmt: skip
    rep = build_report(_experiment(), snap, [], _audit(CHANGES[0]), NOW)
    assert rep.srm.status == "ok" and rep.srm.treatment_units == 200


def test_evidence_starts_at_min_evidence_units_like_the_controller() -> None:
    rng = np.random.default_rng(3)
    snap = ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=50.0, taken_at=NOW,
        control=_arm(rng, 10), treatment=_arm(rng, 10),
    )  # fmt: skip
    rep = build_report(_experiment(), snap, [], _audit(CHANGES[0]), NOW)
    primary = rep.metrics[0]
    assert primary.role == "primary" and primary.verdict == "insufficient data"
    assert "20+" in primary.note
    rep = build_report(_experiment(policy={**POLICY, "min_evidence_units": 5}), snap, [], [], NOW)
    assert rep.metrics[0].always_valid is not None


def test_guardrail_rows_show_both_arms(capsys: pytest.CaptureFixture[str]) -> None:
    snap, _ = _ramped(np.random.default_rng(4))
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES), NOW)
    guards = [m for m in rep.metrics if m.role == "guardrail"]
    assert [g.metric for g in guards] == ["error_rate", "latency_p95_ms"]
    for g in guards:
        assert g.control is not None and g.treatment is not None, g
    assert guards[0].control == pytest.approx(0.01, abs=0.005)
    assert 150 < guards[1].control < 400  # type: ignore[operator]
    html = render_html(rep)
    assert f"<td>{guards[0].control:.4g}</td>" in html


def test_share_chart_and_table_list_every_change_on_a_time_axis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    snap, _ = _ramped(np.random.default_rng(5))
    changes = [*CHANGES, (T0 + 12600, "controller", "rollback", 50.0, 0.0)]
    rep = build_report(_experiment(), snap, [], _audit(*changes), NOW)
    assert [(c.share, c.action, c.actor) for c in rep.shares] == [
        (20, "create", "alice"), (25, "set-share", "alice"), (30, "set-share", "alice"),
        (50, "advance", "alice"), (0, "rollback", "controller"),
    ]  # fmt: skip
    html = render_html(rep)
    share_chart = html.split("Treatment share (%)")[1].split("</svg>")[0]
    assert "no data yet" not in share_chart and "<polyline" in share_chart
    assert "time (UTC)" in share_chart and "15:06:40" in share_chart  # a time axis
    for c in rep.shares:
        assert f"<td>{c.share:g} %</td><td>{c.action}</td>" in html
    show(rep.model_dump(mode="json"))
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert out.count("set-share by alice") == 2 and "rollback by controller" in out


def test_a_trimmed_audit_log_starts_at_the_share_before_its_first_change() -> None:
    snap, _ = _ramped(np.random.default_rng(6))
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES[2:]), NOW)
    assert [c.share for c in rep.shares] == [25, 30, 50]


def test_an_adapter_swap_is_marked(capsys: pytest.CaptureFixture[str]) -> None:
    snap, _ = _ramped(np.random.default_rng(7))
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES, swap=T0 + 12000), NOW)
    assert [(m.kind, m.label) for m in rep.markers] == [("swap", "swap v1 -> v2")]
    assert [c.share for c in rep.shares] == [20, 25, 30, 50]  # a swap is no share change
    html = render_html(rep)
    assert html.count("swap v1 -&gt; v2") >= 2  # the note and the charts' marker
    show(rep.model_dump(mode="json"))
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "swap v1 -> v2: a new period and ramp step" in out


def test_reports_from_before_these_fields_still_render() -> None:
    snap, _ = _ramped(np.random.default_rng(8))
    data = build_report(_experiment(), snap, [], [], NOW).model_dump(mode="json")
    for key in ("shares", "markers", "step", "step_note", "outlook"):
        data.pop(key)
    from analysis.report import Report

    assert "<svg" in render_html(Report.model_validate(data)) or "no data yet" in render_html(
        Report.model_validate(data)
    )


def test_the_report_lists_the_periods_with_their_estimates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each period's start, share and treatment (its record), units and primary difference,
    and its weight in the combined test; a swap is a new period."""
    rng = np.random.default_rng(9)
    parts = [(_arm(rng, 400).units, _arm(rng, 100).units), (_arm(rng, 300).units,
             _arm(rng, 300).units)]  # fmt: skip
    snap, _ = _ramped(rng)
    snap = snap.model_copy(
        update={
            "period": 1,
            "periods": [
                PeriodSums(period=i, control=c, treatment=t) for i, (c, t) in enumerate(parts)
            ],
        }
    )
    records = [
        {"period": 0, "started_at": T0, "share": 20.0, "treatment": "v1", "control": "base"},
        {"period": 1, "started_at": T0 + 12000, "share": 50.0, "treatment": "v2",
         "control": "base"},
    ]  # fmt: skip
    rep = build_report(_experiment(), snap, [], _audit(*CHANGES, swap=T0 + 12000), NOW,
                       periods=records)  # fmt: skip
    assert [(p.period, p.share, p.treatment_model) for p in rep.periods] == [
        (0, 20.0, "v1"), (1, 50.0, "v2")]  # fmt: skip
    assert rep.periods[1].units == {"control": 300, "treatment": 300}
    c, t = parts[0][0], parts[0][1]
    want = t.total("fb:thumbs_up") / t.total("votes") - c.total("fb:thumbs_up") / c.total("votes")
    assert rep.periods[0].difference == pytest.approx(want)
    assert sum(p.weight or 0.0 for p in rep.periods) == pytest.approx(1.0)
    html = render_html(rep)
    assert "<h2>Periods</h2>" in html and "v1</td>" in html
    show(rep.model_dump(mode="json"))
    out = " ".join(capsys.readouterr().out.split())
    assert "periods (primary metric within each)" in out
