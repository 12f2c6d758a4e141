"""The experiment report: numbers per metric, the SRM check, the decision history, the share
changes (the page itself is drawn by analysis/report_html.py).

`build_report` is pure: the experiment's settings, its current snapshot, the controller's
evaluations and the audit entries in; a `Report` out. `analysis.report_html.render_html`
turns it into a page.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from analysis import looks as lk
from analysis.guardrails import P95
from analysis.metrics import METRICS, compare, estimates, metric
from analysis.policy import decide
from analysis.stats.bernoulli import histogram_quantile
from analysis.stats.delta import ratio_estimate
from analysis.steps import next_step, share_changed
from analysis.types import (
    Decision,
    ExperimentSnapshot,
    GuardrailResult,
    Interval,
    LookMemory,
    MetricComparison,
    MetricLooks,
    Policy,
    SRMResult,
    StepState,
)


class MetricRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    role: str  # primary, guardrail, secondary
    control: float | None = None
    treatment: float | None = None
    difference: float | None = None
    always_valid: Interval | None = None
    fixed_horizon: Interval | None = None
    level: float | None = None  # the intervals' confidence level: 1 − the test's alpha
    p_value: float | None = None
    always_valid_p: float | None = None
    verdict: str
    note: str = ""


class Point(BaseModel):
    model_config = ConfigDict(frozen=True)

    t: float
    share: float
    action: str
    control: float | None = None
    treatment: float | None = None
    low: float | None = None
    high: float | None = None
    guardrails: dict[str, float] = Field(default_factory=dict)


class ShareChange(BaseModel):
    """The treatment share from `t` on, as the audit log recorded it."""

    model_config = ConfigDict(frozen=True)

    t: float
    share: float
    action: str
    actor: str = ""
    reason: str = ""


class Marker(BaseModel):
    """An event drawn across the charts: a treatment swap (a new adapter)."""

    model_config = ConfigDict(frozen=True)

    t: float
    kind: str
    label: str


class PeriodRow(BaseModel):
    """One period of the experiment (a span of fixed share and targets) with the primary
    metric estimated within it, and the weight the period got in the combined test."""

    model_config = ConfigDict(frozen=True)

    period: int
    started_at: float | None = None
    share: float | None = None
    treatment_model: str = ""
    units: dict[str, int] = Field(default_factory=dict)
    control: float | None = None
    treatment: float | None = None
    difference: float | None = None
    weight: float | None = Field(
        default=None, description="Share of the combined estimate (None: not combined)"
    )


class Report(BaseModel):
    model_config = ConfigDict(frozen=True)

    experiment: str
    route: str
    state: str
    treatment_percent: float
    control_model: str
    treatment_model: str
    generated_at: float
    policy: Policy
    units: dict[str, int]
    requests: dict[str, int]
    errors: dict[str, int] = Field(default_factory=dict)
    client_closed: dict[str, int] = Field(
        default_factory=dict, description="Requests whose client went away (not errors)"
    )
    latency_p95_ms: dict[str, float | None]
    metrics: list[MetricRow]
    srm: SRMResult
    decisions: list[Decision]
    series: list[Point]
    audit: list[dict[str, Any]]
    shares: list[ShareChange] = Field(
        default_factory=list, description="Every share change in the audit log, oldest first"
    )
    markers: list[Marker] = Field(default_factory=list, description="Treatment swaps")
    periods: list[PeriodRow] = Field(
        default_factory=list, description="The periods with data, oldest first"
    )
    step: StepState | None = Field(
        default=None, description="The ramp step the SRM check and the minimums look at"
    )
    step_note: str = ""
    outlook: Decision | None = Field(
        default=None, description="What the controller's policy decides on these numbers now"
    )


def _direction_word(comparison: MetricComparison, higher_is_better: bool) -> str:
    test = comparison.test
    if test.status != "ok" or test.interval is None:
        return "insufficient data"
    if test.interval.low > 0:
        return "better" if higher_is_better else "worse"
    if test.interval.high < 0:
        return "worse" if higher_is_better else "better"
    return "no significant difference"


def _row(
    snapshot: ExperimentSnapshot,
    name: str,
    role: str,
    policy: Policy,
    live: MetricComparison | None = None,
) -> MetricRow | None:
    """`live`: the always-valid comparison the controller acts on (the primary metric's, with
    the look memory); by default this look's alone."""
    # the controller's evidence rule: `min_evidence_units` units with data per arm
    n = policy.min_evidence_units
    # the primary metric at the level the controller tests it, the others at the policy's alpha
    a = policy.primary_level if role == "primary" else policy.alpha
    if live is None:
        live = compare(snapshot, name, sequential=True, alpha=a, min_units=n)
    fixed = compare(snapshot, name, sequential=False, alpha=a, min_units=n)
    if live.control is None and live.treatment is None:
        return None
    m = METRICS.get(name)
    higher = m.higher_is_better if m is not None else True
    if role == "primary" and policy.higher_is_better is not None:
        higher = policy.higher_is_better
    return MetricRow(
        metric=name,
        role=role,
        control=live.control.value if live.control else None,
        treatment=live.treatment.value if live.treatment else None,
        difference=live.test.difference,
        always_valid=live.test.interval,
        fixed_horizon=fixed.test.interval,
        level=1 - a,
        p_value=fixed.test.p_value,
        always_valid_p=live.test.p_value,
        verdict=_direction_word(live, higher),
        note=live.test.reason,
    )


def _arm_values(snapshot: ExperimentSnapshot, g: GuardrailResult) -> tuple[float | None, ...]:
    """Both arms' values of a guardrail's metric (the p95 of the latency histogram for the
    p95 guardrail)."""
    if g.metric == P95:
        return (
            histogram_quantile(snapshot.control.totals.latency_histogram),
            histogram_quantile(snapshot.treatment.totals.latency_histogram),
        )
    try:
        m = metric(g.metric)  # a catalogue metric or a custom signal's rate
    except KeyError:
        return None, None
    c, t = estimates(m, snapshot.control, snapshot.treatment)
    return (c.value if c else None, t.value if t else None)


def _guardrail_row(g: GuardrailResult, snapshot: ExperimentSnapshot) -> MetricRow:
    t = g.test
    control, treatment = _arm_values(snapshot, g)
    return MetricRow(
        metric=g.metric,
        role="guardrail",
        control=control,
        treatment=treatment,
        difference=t.difference,
        always_valid=t.interval,
        always_valid_p=t.p_value,
        level=1 - t.alpha,
        verdict=g.verdict.replace("_", "-"),
        note=_margin(g) + f"; {g.reason}",
    )


def share_changes(audit: list[dict[str, Any]]) -> list[ShareChange]:
    """Every change of the treatment share in `audit` (oldest first): the creation, manual
    set-share and PATCH, advance, the controller's decisions, the circuit breaker, rollback and
    promote; whoever made it."""
    out: list[ShareChange] = []
    last: float | None = None
    for a in audit:
        after = a.get("after") if isinstance(a.get("after"), dict) else None
        if after is None or "treatment_percent" not in after:
            continue
        before = a.get("before") if isinstance(a.get("before"), dict) else None
        share = float(after["treatment_percent"])
        prior = last if last is not None else (before or {}).get("treatment_percent")
        if prior is not None and float(prior) == share:
            continue
        if last is None and before is not None and "treatment_percent" in before:
            # the log starts after the creation (trimmed): the share before the first change
            out.append(
                ShareChange(t=float(a.get("ts", 0)), share=float(before["treatment_percent"]),
                            action="(before)", actor="", reason="")
            )  # fmt: skip
        out.append(
            ShareChange(
                t=float(a.get("ts", 0)), share=share, action=str(a.get("action", "")),
                actor=str(a.get("actor", "")), reason=str(a.get("reason", "")),
            )
        )  # fmt: skip
        last = share
    return out


def swap_markers(audit: list[dict[str, Any]]) -> list[Marker]:
    """A marker per treatment swap (the `swap` action, or any change of the treatment's model):
    from then on the treatment arm is another adapter, in a new period."""
    out: list[Marker] = []
    for a in audit:
        model = [
            ((a.get(k) or {}).get("treatment") or {}).get("model") for k in ("before", "after")
        ]
        if a.get("action") != "swap" and (model[0] is None or model[0] == model[1]):
            continue
        out.append(
            Marker(t=float(a.get("ts", 0)), kind="swap", label=f"swap {model[0]} -> {model[1]}")
        )
    return out


def period_rows(
    snapshot: ExperimentSnapshot, policy: Policy, records: list[dict[str, Any]]
) -> list[PeriodRow]:
    """The periods with data (`snapshot.periods`), with their records (router/control/
    periods.py: start, share, treatment model) and the primary metric within each."""
    try:
        m = metric(policy.primary_metric)
    except KeyError:
        return []
    fixed = compare(snapshot, policy.primary_metric, sequential=False,
                    alpha=policy.primary_level, min_units=policy.min_evidence_units)  # fmt: skip
    weights = {p.period: p.weight for p in fixed.periods}
    known = {int(r.get("period", -1)): r for r in records}
    out: list[PeriodRow] = []
    for p in snapshot.periods:
        rec = known.get(p.period, {})
        c = ratio_estimate(p.control, m.numerator, m.denominator)
        t = ratio_estimate(p.treatment, m.numerator, m.denominator)
        out.append(PeriodRow(
            period=p.period, started_at=rec.get("started_at"), share=rec.get("share"),
            treatment_model=str(rec.get("treatment", "")),
            units={"control": p.control.units, "treatment": p.treatment.units},
            control=c.value if c else None, treatment=t.value if t else None,
            difference=t.value - c.value if c and t else None, weight=weights.get(p.period),
        ))  # fmt: skip
    return out


def _report_step(
    stored: StepState | None,
    experiment: dict[str, Any],
    snapshot: ExperimentSnapshot,
    audit: list[dict[str, Any]],
    changes: list[ShareChange],
    now: float,
) -> tuple[StepState, str]:
    """The step the controller evaluates (analysis/steps.py, the same rule) and a note on it.
    Where the controller has not yet started the step of the current share (it has not
    evaluated the experiment since the change, or never), the step is the one it would start:
    at the current counts, as no units are known to have arrived under this share (so no SRM
    verdict on older units), or from zero when the share never changed."""
    share = snapshot.treatment_percent
    resumed_at = float(experiment.get("resumed_at") or 0.0)
    c, t = snapshot.control.units, snapshot.treatment.units
    step = next_step(
        stored, share=share, resumed_at=resumed_at, control_units=c.units,
        treatment_units=t.units, moved_in=t.moved_in, control_moved_in=c.moved_in, now=now,
        changed=stored is None and share_changed(audit),
        period=int(experiment.get("period") or 0),
    )  # fmt: skip
    if step is stored:
        return step, ""
    since = max([ch.t for ch in changes] + [resumed_at])
    step = step.model_copy(update={"started_at": since or now})
    if step.control_units_at_start == step.treatment_units_at_start == 0:
        return step, ""  # every unit arrived under this share
    return step, (
        f"the controller has not evaluated the {share:g} % step yet: the units that arrived "
        "under it are not known, so the SRM check waits for its next evaluation"
    )


def build_report(
    experiment: dict[str, Any],
    snapshot: ExperimentSnapshot,
    decisions: list[Decision],
    audit: list[dict[str, Any]],
    now: float,
    step: StepState | None = None,
    looks: LookMemory | None = None,
    periods: list[dict[str, Any]] | None = None,
) -> Report:
    """`audit` oldest first; `step` the controller's stored step and `looks` its look memory
    (router/keys.py), if any; `periods` the experiment's period records
    (router/control/periods.py).

    The evidence rules are the controller's: metrics are tested from `min_evidence_units`
    units with data per arm, the primary metric and the guardrails with the controller's look
    memory (fixed mixing scales, running minimum p-value, intersected intervals), and the SRM
    check is the policy's own (`decide`) on the units of the current step against its share,
    never all units so far against the current share."""
    policy = Policy.model_validate(experiment.get("policy", {}))
    target = str((experiment.get("treatment") or {}).get("model", ""))
    memory = lk.current(looks, target, float(experiment.get("resumed_at") or 0.0))
    a, n = policy.alpha, policy.min_evidence_units
    unused: dict[str, MetricLooks] = {}  # the report reads the memory, never writes it
    rows: list[MetricRow] = []
    live = lk.primary(snapshot, policy.primary_metric, memory, unused,
                      alpha=policy.primary_level, min_units=n)  # fmt: skip
    primary = _row(snapshot, policy.primary_metric, "primary", policy, live)
    if primary is not None:
        rows.append(primary)
    for spec in policy.guardrails:
        g = lk.guardrail(snapshot, spec, memory, unused, alpha=a, min_units=n)
        rows.append(_guardrail_row(g, snapshot))
    for name in METRICS:
        if name != policy.primary_metric:
            row = _row(snapshot, name, "secondary", policy)
            if row is not None and row.verdict != "insufficient data":
                rows.append(row)
    changes = share_changes(audit)
    current, step_note = _report_step(step, experiment, snapshot, audit, changes, now)
    ramp = experiment.get("ramp_steps") or [5.0, 10.0, 25.0, 50.0, 100.0]
    outlook = decide(policy, snapshot, current, now, [float(x) for x in ramp], looks=memory)
    srm = outlook.srm or SRMResult(
        status="insufficient_data",
        reason="not evaluated",
        expected_share=snapshot.treatment_percent / 100,
        threshold=policy.srm_threshold,
    )
    series = [
        Point(
            t=d.at,
            share=d.share,
            action=d.action,
            control=d.primary.control.value if d.primary and d.primary.control else None,
            treatment=d.primary.treatment.value if d.primary and d.primary.treatment else None,
            low=d.primary.test.interval.low if d.primary and d.primary.test.interval else None,
            high=d.primary.test.interval.high if d.primary and d.primary.test.interval else None,
            guardrails={
                g.metric: g.test.difference
                for g in d.guardrails
                if g.test.difference is not None and not g.relative
            },
        )
        for d in decisions
    ]
    return Report(
        experiment=snapshot.experiment,
        route=snapshot.route,
        state=str(experiment.get("state", "")),
        treatment_percent=snapshot.treatment_percent,
        control_model=str(experiment.get("control", {}).get("model", "")),
        treatment_model=str(experiment.get("treatment", {}).get("model", "")),
        generated_at=now,
        policy=policy,
        units={
            "control": snapshot.control.units.units,
            "treatment": snapshot.treatment.units.units,
        },
        requests={
            "control": snapshot.control.totals.requests,
            "treatment": snapshot.treatment.totals.requests,
        },
        errors={
            "control": snapshot.control.totals.errors,
            "treatment": snapshot.treatment.totals.errors,
        },
        client_closed={
            "control": snapshot.control.totals.client_closed,
            "treatment": snapshot.treatment.totals.client_closed,
        },
        latency_p95_ms={
            "control": histogram_quantile(snapshot.control.totals.latency_histogram),
            "treatment": histogram_quantile(snapshot.treatment.totals.latency_histogram),
        },
        metrics=rows,
        srm=srm,
        decisions=[d for d in decisions if d.action != "hold"],
        series=series,
        audit=audit,
        shares=changes,
        markers=swap_markers(audit),
        periods=period_rows(snapshot, policy, periods or []),
        step=current,
        step_note=step_note,
        # what the policy would do: only meaningful while the controller still evaluates it
        outlook=outlook if experiment.get("state") in ("running", "paused") else None,
    )


def _margin(g: GuardrailResult) -> str:
    return f"margin {g.margin:.0%} relative" if g.relative else f"margin +{g.margin:g}"
