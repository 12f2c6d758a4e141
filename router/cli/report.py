"""`abgate report NAME`: the experiment's report (metrics, intervals, verdicts, the SRM check on
the controller's current ramp step, share changes and adapter swaps, decisions).

The console view reads the admin API's JSON as it is; the statistics stack (scipy, through
`analysis.report`) is imported only to render `--html`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli.common import (
    DEFAULT_URL,
    AsJson,
    Name,
    Token,
    Url,
    admin_client,
    fail,
    print_json,
    say,
)


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        name: Name,
        html_file: Annotated[
            Path | None, typer.Option("--html", help="also write a self-contained HTML report")
        ] = None,
        json_file: Annotated[
            Path | None, typer.Option("--json-file", help="also write the JSON to this file")
        ] = None,
        as_json: AsJson = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """The experiment's report: metrics, intervals, verdicts, SRM, decisions."""
        data = admin_client(url, token).call("GET", f"/admin/experiments/{name}/report")
        if as_json:
            print_json(data)
        else:
            show(data)
        if json_file is not None:
            _write(json_file, json.dumps(data, indent=2, ensure_ascii=False) + "\n", as_json)
        if html_file is not None:
            from analysis.report import Report
            from analysis.report_html import render_html

            _write(html_file, render_html(Report.model_validate(data)), as_json)


def _write(path: Path, content: str, quiet_stdout: bool) -> None:
    from offline.files import write_atomically

    try:
        write_atomically(path, content)  # never leave a half-written report behind
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}", code=2)
    if quiet_stdout:  # stdout holds the JSON alone
        typer.echo(f"wrote {path}", err=True)
    else:
        say(f"wrote {path}")


def show(rep: dict[str, Any]) -> None:
    from rich.console import Console

    from router.cli.tables import Column, fitted

    console = Console(highlight=False)
    units = rep["units"]
    closed = rep.get("client_closed") or {}
    console.print(  # wraps at spaces: a long model name moves to the next line whole
        f"{rep['experiment']} ({rep['state']}) route {rep['route']}: {rep['treatment_model']} vs "
        f"{rep['control_model']} at {rep['treatment_percent']:g}%; "
        f"units {units.get('control', 0)}/{units.get('treatment', 0)}"
        + (
            f"; client closes {closed.get('control', 0)}/{closed.get('treatment', 0)}"
            if any(closed.values())
            else ""
        ),
        markup=False,
    )
    columns = [
        Column("metric"), Column("difference", justify="right"),
        Column("always-valid CI", justify="right"), Column("verdict"),
        Column("role", "extra"), Column("control", "extra", "right"),
        Column("treatment", "extra", "right"),
    ]  # fmt: skip
    rows = []
    for m in rep["metrics"]:
        ci = m.get("always_valid")
        interval = "-" if ci is None else f"[{ci['low']:.4g}, {ci['high']:.4g}]"
        if ci is not None and m.get("level") is not None:
            interval += f" ({100 * m['level']:.4g}%)"
        rows.append(
            [
                m["metric"], _num(m.get("difference")), interval, m["verdict"], m["role"],
                _num(m.get("control")), _num(m.get("treatment")),
            ]
        )  # fmt: skip
    console.print(fitted(console, columns, rows))
    srm = rep["srm"]
    if srm["status"] == "ok":
        line = f"SRM: {'MISMATCH' if srm['mismatch'] else 'ok'} (p = {_num(srm.get('p_value'))})"
    else:
        line = f"SRM: insufficient data ({srm.get('reason', '')})"
    step = rep.get("step")
    if step:  # the SRM check's units: those of the controller's current ramp step
        line += f" on the units of the {step['share']:g}% step since {_when(step['started_at'])}"
    console.print(line, markup=False)
    if rep.get("step_note"):
        console.print(f"  {rep['step_note']}", markup=False)
    outlook = rep.get("outlook")
    if outlook:
        why = "; ".join(outlook["reasons"])
        console.print(f"controller policy now: {outlook['action']} ({why})", markup=False)
    shares = rep.get("shares") or []
    if shares:
        console.print("share changes:", markup=False)
    for c in shares:
        who = f" by {c['actor']}" if c.get("actor") else ""
        console.print(f"  {_when(c['t'])} {c['share']:g}% {c['action']}{who}", markup=False)
    for m in rep.get("markers") or []:
        console.print(
            f"  {_when(m['t'])} {m['label']}: a new period and ramp step (the cumulative "
            "numbers mix both adapters; the test compares the arms within periods)",
            markup=False,
        )
    periods = rep.get("periods") or []
    if len(periods) > 1:
        console.print("periods (primary metric within each):", markup=False)
    for p in periods if len(periods) > 1 else []:
        since = "-" if p.get("started_at") is None else _when(p["started_at"])
        share = "-" if p.get("share") is None else f"{p['share']:g}%"
        weight = "-" if p.get("weight") is None else f"{p['weight']:.0%}"
        console.print(
            f"  {p['period']}: since {since}, {share}, {p.get('treatment_model', '')}: "
            f"difference {_num(p.get('difference'))} (weight {weight})",
            markup=False,
        )
    if rep["decisions"]:
        console.print("decisions:", markup=False)
    for d in rep["decisions"]:
        why = "; ".join(d["reasons"])
        console.print(f"  {d['action']} at {d['share']:g}%: {why}", markup=False)


def _when(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
