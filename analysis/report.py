"""The experiment report: numbers per metric, the SRM check, the decision history, and a
self-contained HTML page with inline SVG charts (opens without network access).

`build_report` is pure: the experiment's settings, its current snapshot, the controller's
evaluations and the audit entries in; a `Report` out. `render_html` turns it into a page.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from analysis.guardrails import P95, evaluate
from analysis.metrics import METRICS, compare, estimates, metric
from analysis.policy import decide
from analysis.stats.quantiles import latency_quantile
from analysis.steps import next_step, share_changed
from analysis.types import (
    Decision,
    ExperimentSnapshot,
    GuardrailResult,
    Interval,
    MetricComparison,
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


def _row(snapshot: ExperimentSnapshot, name: str, role: str, policy: Policy) -> MetricRow | None:
    # the controller's evidence rule: `min_evidence_units` units with data per arm
    n = policy.min_evidence_units
    live = compare(snapshot, name, sequential=True, alpha=policy.alpha, min_units=n)
    fixed = compare(snapshot, name, sequential=False, alpha=policy.alpha, min_units=n)
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
        p_value=fixed.test.p_value,
        always_valid_p=live.test.p_value,
        verdict=_direction_word(live, higher),
        note=live.test.reason,
    )


def _arm_values(snapshot: ExperimentSnapshot, g: GuardrailResult) -> tuple[float | None, ...]:
    """Both arms' values of a guardrail's metric (the estimated p95 for the p95 guardrail)."""
    if g.metric == P95:
        return (
            latency_quantile(snapshot.control.totals),
            latency_quantile(snapshot.treatment.totals),
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
    """A marker per treatment swap: from then on the treatment arm is another adapter, and
    the report's numbers mix both."""
    out: list[Marker] = []
    for a in audit:
        if a.get("action") != "swap":
            continue
        model = [
            ((a.get(k) or {}).get("treatment") or {}).get("model") for k in ("before", "after")
        ]
        out.append(
            Marker(t=float(a.get("ts", 0)), kind="swap", label=f"swap {model[0]} -> {model[1]}")
        )
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
) -> Report:
    """`audit` oldest first; `step` the controller's stored step (router/keys.py), if any.

    The evidence rules are the controller's: metrics are tested from `min_evidence_units`
    units with data per arm, and the SRM check is the policy's own (`decide`) on the units of
    the current step against its share, never all units so far against the current share."""
    policy = Policy.model_validate(experiment.get("policy", {}))
    rows: list[MetricRow] = []
    primary = _row(snapshot, policy.primary_metric, "primary", policy)
    if primary is not None:
        rows.append(primary)
    for spec in policy.guardrails:
        g = evaluate(
            snapshot, spec.metric, spec.margin, relative=spec.relative, alpha=policy.alpha,
            min_units=policy.min_evidence_units,
        )  # fmt: skip
        rows.append(_guardrail_row(g, snapshot))
    for name in METRICS:
        if name != policy.primary_metric:
            row = _row(snapshot, name, "secondary", policy)
            if row is not None and row.verdict != "insufficient data":
                rows.append(row)
    changes = share_changes(audit)
    current, step_note = _report_step(step, experiment, snapshot, audit, changes, now)
    ramp = experiment.get("ramp_steps") or [5.0, 10.0, 25.0, 50.0, 100.0]
    outlook = decide(policy, snapshot, current, now, [float(x) for x in ramp])
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
            "control": latency_quantile(snapshot.control.totals),
            "treatment": latency_quantile(snapshot.treatment.totals),
        },
        metrics=rows,
        srm=srm,
        decisions=[d for d in decisions if d.action != "hold"],
        series=series,
        audit=audit,
        shares=changes,
        markers=swap_markers(audit),
        step=current,
        step_note=step_note,
        # what the policy would do: only meaningful while the controller still evaluates it
        outlook=outlook if experiment.get("state") in ("running", "paused") else None,
    )


# -- HTML -------------------------------------------------------------------------------------

CONTROL, TREATMENT, SHARE, BAND = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"
MARKER = "#7f7f7f"
_W, _H, _PAD = 860, 240, 48


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _chart(
    title: str,
    series: list[tuple[str, str, list[tuple[float, float]]]],
    band: list[tuple[float, float, float]] | None = None,
    hline: float | None = None,
    step: bool = False,
    x_range: tuple[float, float] | None = None,
    markers: list[Marker] | None = None,
) -> str:
    """An SVG line chart over time: series = (label, colour, [(t, y)]); band = [(t, low,
    high)]; x_range the common time span of the report's charts; markers vertical lines."""
    xs = [x for _, _, pts in series for x, _ in pts] + [x for x, _, _ in band or []]
    ys = [y for _, _, pts in series for _, y in pts]
    ys += [v for _, lo, hi in band or [] for v in (lo, hi)] + ([hline] if hline is not None else [])
    if not xs or not ys:
        return f'<div class="chart empty"><h3>{html.escape(title)}</h3><p>no data yet</p></div>'
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    x0, x1 = min(x0, *xs), max(x1, *xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1e-9 - abs(y0) * 0.05, y1 + 1e-9 + abs(y1) * 0.05
    pad_y = (y1 - y0) * 0.08
    y0, y1 = y0 - pad_y, y1 + pad_y

    def px(x: float) -> float:
        return _PAD + (x - x0) / (x1 - x0) * (_W - 2 * _PAD)

    def py(y: float) -> float:
        return _H - _PAD + (y0 - y) / (y1 - y0) * (_H - 2 * _PAD) + 0.0

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img">',
        f'<rect x="{_PAD}" y="{_PAD / 2}" width="{_W - 2 * _PAD}" '
        f'height="{_H - 1.5 * _PAD}" fill="#fafafa" stroke="#ddd"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + pad_y + frac * (y1 - y0 - 2 * pad_y)
        parts.append(f'<text x="4" y="{py(yv) + 4:.1f}" font-size="11">{_fmt(yv, 3)}</text>')
    # the time axis (UTC): the date once, then times of day
    fmt = "%H:%M:%S" if x1 - x0 < 86400 else "%m-%d %H:%M"
    for k in range(5):
        xv = x0 + k / 4 * (x1 - x0)
        label = dt.datetime.fromtimestamp(xv, dt.UTC).strftime(fmt)
        anchor = ("start", "middle", "middle", "middle", "end")[k]
        parts.append(
            f'<line x1="{px(xv):.1f}" x2="{px(xv):.1f}" y1="{_H - _PAD:.1f}" '
            f'y2="{_H - _PAD + 4:.1f}" stroke="#999"/>'
            f'<text x="{px(xv):.1f}" y="{_H - _PAD + 16:.1f}" font-size="11" '
            f'text-anchor="{anchor}">{label}</text>'
        )
    parts.append(
        f'<text x="{_W - _PAD}" y="{_H - 10}" font-size="11" text-anchor="end" fill="#666">'
        f"time (UTC), from {_when(x0)}</text>"
    )
    for m in markers or []:
        parts.append(
            f'<line x1="{px(m.t):.1f}" x2="{px(m.t):.1f}" y1="{_PAD / 2}" y2="{_H - _PAD}" '
            f'stroke="{MARKER}" stroke-dasharray="6 3" stroke-width="1.5"/>'
            f'<text x="{px(m.t) + 3:.1f}" y="{_PAD / 2 + 12}" font-size="11" '
            f'fill="{MARKER}">{html.escape(m.label)}</text>'
        )
    if band:
        upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in band)
        lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(band))
        parts.append(f'<polygon points="{upper} {lower}" fill="{BAND}" fill-opacity="0.35"/>')
    if hline is not None:
        parts.append(
            f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{py(hline):.1f}" '
            f'y2="{py(hline):.1f}" stroke="#555" stroke-dasharray="4 3"/>'
        )
    for i, (label, colour, pts) in enumerate(series):
        if not pts:
            continue
        coords: list[str] = []
        for j, (x, y) in enumerate(pts):
            if step and j:
                coords.append(f"{px(x):.1f},{py(pts[j - 1][1]):.1f}")
            coords.append(f"{px(x):.1f},{py(y):.1f}")
        parts.append(
            f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colour}" '
            f'stroke-width="3"/>'
        )
        parts.append(
            f'<text x="{_PAD + 8 + 150 * i}" y="{_H - 10}" font-size="12" '
            f'fill="{colour}">■ {html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return f'<div class="chart"><h3>{html.escape(title)}</h3>{"".join(parts)}</div>'


def _share_points(r: Report) -> list[tuple[float, float]]:
    """The share over time as steps: every change in the audit log (or, without one, the
    controller's evaluations), held until the report was generated."""
    pts = [(c.t, c.share) for c in r.shares] or [(p.t, p.share) for p in r.series]
    if pts and pts[-1][0] < r.generated_at:
        pts.append((r.generated_at, pts[-1][1]))
    return pts


def render_html(report: Report) -> str:
    r = report
    s = r.series
    shares = _share_points(r)
    times = [t for t, _ in shares] + [p.t for p in s] + [m.t for m in r.markers]
    span = (min(times), max([*times, r.generated_at])) if times else None
    chart: dict[str, Any] = {"x_range": span, "markers": r.markers}
    share_chart = _chart("Treatment share (%)", [("share", SHARE, shares)], step=True, **chart)
    primary_chart = _chart(
        f"{r.policy.primary_metric} per arm",
        [
            ("control", CONTROL, [(p.t, p.control) for p in s if p.control is not None]),
            ("treatment", TREATMENT, [(p.t, p.treatment) for p in s if p.treatment is not None]),
        ],
        **chart,
    )
    diff_chart = _chart(
        f"{r.policy.primary_metric}: treatment − control, always-valid 95 % interval",
        [
            (
                "difference",
                TREATMENT,
                [
                    ((p.t), (p.low + p.high) / 2)
                    for p in s
                    if p.low is not None and p.high is not None
                ],
            )
        ],
        band=[(p.t, p.low, p.high) for p in s if p.low is not None and p.high is not None],
        hline=0.0,
        **chart,
    )
    guard_names = sorted({g for p in s for g in p.guardrails})
    palette = [TREATMENT, CONTROL, SHARE, "#9467bd", "#8c564b"]
    guard_chart = _chart(
        "Guardrails: treatment − control",
        [
            (g, palette[i % len(palette)], [(p.t, p.guardrails[g]) for p in s if g in p.guardrails])
            for i, g in enumerate(guard_names)
        ],
        hline=0.0,
        **chart,
    )
    rows = "".join(
        f"<tr class='{m.role}'><td>{html.escape(m.metric)}</td><td>{m.role}</td>"
        f"<td>{_fmt(m.control)}</td><td>{_fmt(m.treatment)}</td><td>{_fmt(m.difference)}</td>"
        f"<td>{_iv(m.always_valid)}</td><td>{_iv(m.fixed_horizon)}</td>"
        f"<td>{_fmt(m.p_value, 3)}</td><td><b>{html.escape(m.verdict)}</b></td>"
        f"<td class='note'>{html.escape(m.note)}</td></tr>"
        for m in r.metrics
    )
    decisions = (
        "".join(
            f"<tr><td>{_when(d.at)}</td><td>{d.action}</td><td>{d.share:g} %</td>"
            f"<td>{html.escape('; '.join(d.reasons))}</td></tr>"
            for d in r.decisions
        )
        or "<tr><td colspan='4'>none yet</td></tr>"
    )
    audit = "".join(
        f"<tr><td>{_when(float(a.get('ts', 0)))}</td><td>{html.escape(str(a.get('actor')))}</td>"
        f"<td>{html.escape(str(a.get('action')))}</td><td>{html.escape(str(a.get('reason')))}</td></tr>"
        for a in r.audit
    )
    changes = (
        "".join(
            f"<tr><td>{_when(c.t)}</td><td>{c.share:g} %</td><td>{html.escape(c.action)}</td>"
            f"<td>{html.escape(c.actor)}</td><td>{html.escape(c.reason)}</td></tr>"
            for c in r.shares
        )
        or "<tr><td colspan='5'>none recorded</td></tr>"
    )
    swaps = "".join(
        f"<p class='warn'>{_when(m.t)} UTC: {html.escape(m.label)}: the treatment's numbers "
        "mix both adapters.</p>"
        for m in r.markers
    )
    step = r.step
    step_text = (
        ""
        if step is None
        else f"<p>Current ramp step: {step.share:g} % since {_when(step.started_at)} UTC "
        f"(units at its start: {step.control_units_at_start} control, "
        f"{step.treatment_units_at_start} treatment). {html.escape(r.step_note)}</p>"
    )
    outlook = (
        ""
        if r.outlook is None
        else f"<p>The controller's policy on these numbers: <b>{r.outlook.action}</b> "
        f"({html.escape('; '.join(r.outlook.reasons))}).</p>"
    )
    srm = r.srm
    srm_text = (
        f"{srm.treatment_units} of {srm.control_units + srm.treatment_units} units in treatment "
        f"({_fmt(srm.observed_share, 3)}) vs {srm.expected_share:.2%} expected: "
        f"p = {_fmt(srm.p_value, 3)} — {'MISMATCH' if srm.mismatch else 'ok'}"
        if srm.status == "ok"
        else f"insufficient data ({html.escape(srm.reason)})"
    )
    p95 = r.latency_p95_ms
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>abgate report: {html.escape(r.experiment)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.primary {{ background: #eef5ff; }} td.note {{ color: #666; max-width: 340px; }}
p.warn {{ color: #a33; }}
.chart {{ margin: 8px 0 20px; }} .chart h3 {{ margin: 4px 0; font-size: 15px; }}
</style></head><body>
<h1>{html.escape(r.experiment)} <small>({html.escape(r.state)})</small></h1>
<p>Route <b>{html.escape(r.route)}</b>: control <code>{html.escape(r.control_model)}</code>,
treatment <code>{html.escape(r.treatment_model)}</code> at <b>{r.treatment_percent:g} %</b>.
Units: {r.units["control"]} control, {r.units["treatment"]} treatment; requests:
{r.requests["control"]} / {r.requests["treatment"]}; errors:
{r.errors.get("control", 0)} / {r.errors.get("treatment", 0)}; client closes (not errors):
{r.client_closed.get("control", 0)} / {r.client_closed.get("treatment", 0)}; p95 latency
(log-normal approximation):
{_fmt(p95.get("control"))} / {_fmt(p95.get("treatment"))} ms.
Generated {_when(r.generated_at)} UTC.</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>role</th><th>control</th><th>treatment</th><th>difference</th>
<th>always-valid 95 % CI</th><th>fixed-horizon 95 % CI</th><th>p (fixed)</th><th>verdict</th>
<th>note</th></tr>{rows}</table>
<h2>Sample ratio</h2><p>{srm_text}. Tested on the units of the current ramp step, as the
controller tests them.</p>{step_text}{outlook}
<h2>Over time</h2>{swaps}
{share_chart}{primary_chart}{diff_chart}{guard_chart}
<h2>Share changes</h2>
<table><tr><th>time (UTC)</th><th>share</th><th>action</th><th>actor</th><th>why</th></tr>
{changes}</table>
<h2>Decisions</h2>
<table><tr><th>time (UTC)</th><th>action</th><th>share</th><th>why</th></tr>{decisions}</table>
<h2>Audit</h2>
<table><tr><th>time (UTC)</th><th>actor</th><th>action</th><th>reason</th></tr>{audit}</table>
</body></html>
"""


def _margin(g: GuardrailResult) -> str:
    return f"margin {g.margin:.0%} relative" if g.relative else f"margin +{g.margin:g}"


def _iv(interval: Interval | None) -> str:
    return "–" if interval is None else f"[{interval.low:.4g}, {interval.high:.4g}]"
