"""The experiment report as a self-contained HTML page: the `Report` of analysis/report.py drawn
as tables and SVG charts on one UTC time axis, with no external resources."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from analysis.report import Marker, Report
from analysis.types import Interval

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
        f"{r.policy.primary_metric}: treatment − control, always-valid "
        f"{_pct(1 - r.policy.primary_level)} interval",
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
        f"<td>{_iv(m.always_valid, m.level)}</td><td>{_iv(m.fixed_horizon, m.level)}</td>"
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
        f"<p class='warn'>{_when(m.t)} UTC: {html.escape(m.label)}: a new period and a new "
        "ramp step; the cumulative numbers mix both adapters, the test compares the arms "
        "within periods.</p>"
        for m in r.markers
    )
    periods = (
        "".join(
            f"<tr><td>{p.period}</td>"
            f"<td>{_when(p.started_at) if p.started_at is not None else '-'}</td>"
            f"<td>{'-' if p.share is None else f'{p.share:g} %'}</td>"
            f"<td>{html.escape(p.treatment_model)}</td>"
            f"<td>{p.units.get('control', 0)} / {p.units.get('treatment', 0)}</td>"
            f"<td>{_fmt(p.control)}</td><td>{_fmt(p.treatment)}</td>"
            f"<td>{_fmt(p.difference)}</td>"
            f"<td>{'-' if p.weight is None else f'{p.weight:.0%}'}</td></tr>"
            for p in r.periods
        )
        or "<tr><td colspan='9'>none recorded</td></tr>"
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
(from the latency histogram, within 1 %):
{_fmt(p95.get("control"))} / {_fmt(p95.get("treatment"))} ms.
Generated {_when(r.generated_at)} UTC.</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>role</th><th>control</th><th>treatment</th><th>difference</th>
<th>always-valid CI</th><th>fixed-horizon CI</th><th>p (fixed)</th><th>verdict</th>
<th>note</th></tr>{rows}</table>
<h2>Sample ratio</h2><p>{srm_text}. Tested on the units of the current ramp step, as the
controller tests them.</p>{step_text}{outlook}
<h2>Over time</h2>{swaps}
{share_chart}{primary_chart}{diff_chart}{guard_chart}
<h2>Periods</h2>
<p>A period starts with every change of the share or of a target and with a resume; with two
or more, {html.escape(r.policy.primary_metric)} is tested on the periods' differences, each
weighted by its precision (the weight).</p>
<table><tr><th>period</th><th>since (UTC)</th><th>share</th><th>treatment</th>
<th>units c / t</th><th>control</th><th>treatment</th><th>difference</th><th>weight</th></tr>
{periods}</table>
<h2>Share changes</h2>
<table><tr><th>time (UTC)</th><th>share</th><th>action</th><th>actor</th><th>why</th></tr>
{changes}</table>
<h2>Decisions</h2>
<table><tr><th>time (UTC)</th><th>action</th><th>share</th><th>why</th></tr>{decisions}</table>
<h2>Audit</h2>
<table><tr><th>time (UTC)</th><th>actor</th><th>action</th><th>reason</th></tr>{audit}</table>
</body></html>
"""


def _pct(level: float) -> str:
    return f"{100 * level:.4g} %"


def _iv(interval: Interval | None, level: float | None = None) -> str:
    """An interval with its confidence level (the primary metric's differs from the others'
    by default: docs/statistics.md, "The false-action budget")."""
    if interval is None:
        return "–"
    shown = f"[{interval.low:.4g}, {interval.high:.4g}]"
    return shown if level is None else f"{shown} ({_pct(level)})"
