"""The offline gate's report: a JSON document, a Markdown summary and a self-contained HTML page.

`EvalReport` is what ``abgate eval`` writes (``to_json``) and reads back (``from_json``).
`render_table_rows` gives the verdict table's cells as the CLI prints them::

    suite                       base     fine-tuned  delta (95 % CI)        verdict
    target task (200 held-out)  61.0 %   82.0 %      +21.0 [+14.2, +27.5]   win

`render_markdown` and `render_html` add the gate's reasons, warnings, contamination hits and
a few failure examples per suite. The HTML page has no external assets and no scripts; every
piece of model or case text is escaped with ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from analysis.eval.types import ContaminationHit
from analysis.eval.verdict import CaseRow, GateResult, SuiteResult

__all__ = [
    "EvalReport",
    "TableRow",
    "failure_examples",
    "render_html",
    "render_markdown",
    "render_table_rows",
    "table_headers",
]

SNIPPET_CHARS = 300


class EvalReport(BaseModel):
    """One run of ``abgate eval``. Times are given by the caller (UTC recommended)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    spec_name: str
    base_model: str
    candidate_model: str
    started_at: dt.datetime
    finished_at: dt.datetime
    fingerprint: str
    grader_config_hash: str
    suites: list[SuiteResult]
    gate: GateResult
    contamination: list[ContaminationHit] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> EvalReport:
        return cls.model_validate_json(text)


class TableRow(BaseModel):
    """The verdict table's cells for one suite, as printed."""

    model_config = ConfigDict(frozen=True)

    suite: str
    base: str
    candidate: str
    delta: str
    verdict: str
    warning: str = ""

    def cells(self) -> tuple[str, str, str, str, str]:
        return (self.suite, self.base, self.candidate, self.delta, self.verdict)


def _signed(points: float) -> str:
    rounded = round(points, 1)
    return f"{0.0 if rounded == 0 else rounded:+.1f}"


def _rate(fraction: float) -> str:
    return f"{100.0 * fraction:.1f} %"


def table_headers(report: EvalReport) -> tuple[str, str, str, str, str]:
    """Column headers; the interval's level comes from the suites' alpha."""
    levels = {round(100 * s.confidence, 1) for s in report.suites}
    ci = f"{levels.pop():g} % CI" if len(levels) == 1 else "CI"
    return ("suite", "base", "fine-tuned", f"delta ({ci})", "verdict")


def render_table_rows(report: EvalReport) -> list[TableRow]:
    return [
        TableRow(
            suite=s.label,
            base=_rate(s.base_rate),
            candidate=_rate(s.candidate_rate),
            delta=f"{_signed(s.delta_points)} [{_signed(s.ci_low)}, {_signed(s.ci_high)}]",
            verdict=s.verdict,
            warning=s.warning or "",
        )
        for s in report.suites
    ]


def failure_examples(suite: SuiteResult, limit: int = 3) -> list[CaseRow]:
    """Cases the candidate failed: first those the base passed (regressions), then the rest,
    each group in case order; at most ``limit``."""
    regressions = [r for r in suite.rows if not r.candidate.passed and r.base.passed]
    others = [r for r in suite.rows if not r.candidate.passed and not r.base.passed]
    return (regressions + others)[:limit]


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"


def _outcome(passed: bool) -> str:
    return "pass" if passed else "fail"


# --- Markdown --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code_span(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _code_block(text: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return [fence, text, fence]


def _row_md(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_markdown(report: EvalReport, *, examples: int = 3) -> str:
    """The report as Markdown: header, gate, verdict table, details, warnings, contamination
    and up to ``examples`` failure examples per suite."""
    gate = "PASSED" if report.gate.passed else "FAILED"
    lines = [
        f"# abgate eval: {_cell(report.spec_name)}",
        "",
        f"**Gate: {gate}**",
        "",
    ]
    lines += [f"- {_cell(reason)}" for reason in report.gate.reasons]
    if report.gate.reasons:
        lines.append("")
    lines += [
        f"- base: {_code_span(report.base_model)}",
        f"- fine-tuned: {_code_span(report.candidate_model)}",
        f"- started {report.started_at.isoformat()}, finished {report.finished_at.isoformat()}",
        f"- cases fingerprint {_code_span(report.fingerprint)}",
        f"- grader config hash {_code_span(report.grader_config_hash)}",
        "",
    ]
    headers = table_headers(report)
    lines += [_row_md(headers), "|" + "---|" * len(headers)]
    lines += [_row_md(row.cells()) for row in render_table_rows(report)]
    lines += ["", "| suite | n | test | p | MDE (pts) | errors (base / fine-tuned) |"]
    lines.append("|---|---|---|---|---|---|")
    for s in report.suites:
        lines.append(
            _row_md(
                [
                    s.name,
                    str(s.n),
                    s.test,
                    f"{s.p_value:.3g}",
                    f"±{s.mde_points:.1f}",
                    f"{s.base_errors} / {s.candidate_errors}",
                ]
            )
        )
    notes = [*report.warnings, *report.gate.notes]
    if notes:
        lines += ["", "## Warnings", ""]
        lines += [f"- {_cell(note)}" for note in notes]
    if report.contamination:
        lines += ["", "## Contamination", ""]
        for hit in report.contamination:
            lines.append(
                f"- {_code_span(hit.case_id)}: {hit.kind} match (score {hit.score:.2f}), "
                f"training line {hit.train_index + 1}"
            )
    shown = [(s, failure_examples(s, examples)) for s in report.suites]
    if any(rows for _, rows in shown):
        lines += ["", "## Failure examples"]
        for suite, rows in shown:
            if not rows:
                continue
            lines += ["", f"### {_cell(suite.name)}"]
            for r in rows:
                lines += [
                    "",
                    f"- {_code_span(r.case_id)}: base {_outcome(r.base.passed)}, fine-tuned "
                    f"{_outcome(r.candidate.passed)}: {_cell(r.candidate.detail)}",
                ]
                text = r.candidate_error or r.candidate_output
                if text:
                    lines += ["", *_code_block(_snippet(text))]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .35em .7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.gate { padding: .6em 1em; font-weight: bold; border-radius: 4px; }
.pass { background: #e3f4e3; color: #185c18; }
.fail { background: #fbe3e3; color: #8a1c1c; }
.v-win { color: #185c18; font-weight: bold; }
.v-forgetting { color: #8a1c1c; font-weight: bold; }
.v-watch { color: #8a5a00; font-weight: bold; }
pre { background: #f7f7f7; padding: .6em; white-space: pre-wrap; word-break: break-word; }
code { background: #f2f2f2; padding: 0 .2em; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def render_html(report: EvalReport, *, examples: int = 3) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets)."""
    gate_cls = "pass" if report.gate.passed else "fail"
    gate = "PASSED" if report.gate.passed else "FAILED"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>abgate eval: {_e(report.spec_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>abgate eval: {_e(report.spec_name)}</h1>",
        f'<p class="gate {gate_cls}">Gate: {gate}</p>',
    ]
    if report.gate.reasons:
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in report.gate.reasons) + "</ul>")
    out.append(
        f"<p>base: <code>{_e(report.base_model)}</code> · "
        f"fine-tuned: <code>{_e(report.candidate_model)}</code><br>"
        f"started {_e(report.started_at.isoformat())} · "
        f"finished {_e(report.finished_at.isoformat())}<br>"
        f"cases fingerprint <code>{_e(report.fingerprint)}</code> · "
        f"grader config hash <code>{_e(report.grader_config_hash)}</code></p>"
    )
    headers = [*table_headers(report), "n", "p", "MDE (pts)", "warning"]
    out.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>")
    out.append("</thead><tbody>")
    for s, row in zip(report.suites, render_table_rows(report), strict=True):
        verdict_cls = "v-" + s.verdict.replace(" ", "-")
        out.append(
            f"<tr><td>{_e(row.suite)}</td><td class=num>{_e(row.base)}</td>"
            f"<td class=num>{_e(row.candidate)}</td><td class=num>{_e(row.delta)}</td>"
            f'<td class="{verdict_cls}">{_e(row.verdict)}</td><td class=num>{s.n}</td>'
            f"<td class=num>{s.p_value:.3g}</td><td class=num>±{s.mde_points:.1f}</td>"
            f"<td>{_e(row.warning)}</td></tr>"
        )
    out.append("</tbody></table>")
    notes = [*report.warnings, *report.gate.notes]
    if notes:
        out.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes))
        out.append("</ul>")
    if report.contamination:
        out.append("<h2>Contamination</h2><ul>")
        for hit in report.contamination:
            out.append(
                f"<li><code>{_e(hit.case_id)}</code>: {_e(hit.kind)} match "
                f"(score {hit.score:.2f}), training line {hit.train_index + 1}</li>"
            )
        out.append("</ul>")
    shown = [(s, failure_examples(s, examples)) for s in report.suites]
    if any(rows for _, rows in shown):
        out.append("<h2>Failure examples</h2>")
        for suite, rows in shown:
            if not rows:
                continue
            out.append(f"<h3>{_e(suite.name)}</h3>")
            for r in rows:
                out.append(
                    f"<p><code>{_e(r.case_id)}</code>: base {_outcome(r.base.passed)}, "
                    f"fine-tuned {_outcome(r.candidate.passed)}: {_e(r.candidate.detail)}</p>"
                )
                text = r.candidate_error or r.candidate_output
                if text:
                    out.append(f"<pre>{_e(_snippet(text))}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
