"""What `abgate eval` does once its flags are checked: run the gate, print the verdict table,
write the reports and, with `--register`, hand the report to a gateway. Imported only when the
command runs (the statistics and the model clients are heavy)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analysis.eval.report import (
    EvalReport,
    render_html,
    render_markdown,
    render_table_rows,
    table_headers,
)
from analysis.eval.types import EvalInputError
from offline.files import write_atomically
from offline.runner import EndpointUnavailable, EvalOptions, run_eval
from router.cli.common import admin_client, fail

_VERDICT_STYLE = {
    "win": "bold green",
    "acceptable": "green",
    "watch": "yellow",
    "forgetting": "bold red",
    "no improvement": "red",
    "inconclusive": "yellow",
    "incomplete": "bold red",
}


def print_report(console: Console, report: EvalReport) -> None:
    table = Table(
        title=escape(f"{report.spec_name}: {report.base_model} vs {report.candidate_model}")
    )
    for header in table_headers(report):
        table.add_column(header)
    for row in render_table_rows(report):
        cells = [escape(c) for c in row.cells()]
        style = _VERDICT_STYLE.get(row.verdict, "")
        cells[4] = f"[{style}]{cells[4]}[/]" if style else cells[4]
        table.add_row(*cells)
    console.print(table)
    for row in render_table_rows(report):
        if row.warning:
            console.print(f"[yellow]warning[/] {escape(f'{row.suite}: {row.warning}')}")
    for hit in report.contamination:
        console.print(
            f"[red]contaminated[/] case {escape(hit.case_id)}: {hit.kind} match with training line "
            f"{hit.train_index + 1} (similarity {hit.score:.2f})",
            highlight=False,
        )
    for warning in report.warnings:
        console.print(f"[yellow]warning[/] {escape(warning)}")
    verdict = "[bold green]PASSED[/]" if report.gate.passed else "[bold red]FAILED[/]"
    console.print(f"gate: {verdict}")
    for reason in report.gate.reasons:
        console.print(f"  - {reason}", highlight=False, markup=False)
    for note in report.gate.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)


def write_reports(out: Path, report: EvalReport) -> list[Path]:
    paths = [out / "report.json", out / "report.md", out / "report.html"]
    texts = [report.to_json(), render_markdown(report), render_html(report)]
    for path, text in zip(paths, texts, strict=True):
        write_atomically(path, text.rstrip("\n") + "\n")
    return paths


def evaluate(
    spec: Path | None,
    *,
    progress: bool,
    register: tuple[str, str | None] | None,
    **options: Any,
) -> int:
    """Run the gate; the exit code (0 passed, 1 failed). ``register``: (url, token) of the
    gateway to register the report with. ``options``: the fields of `EvalOptions`."""
    out_console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, disable=not progress, transient=True,
    )  # fmt: skip
    task: list[Any] = []

    def phase(name: str, total: int) -> None:
        if task:
            bar.update(task[0], completed=bar.tasks[0].total)
            bar.remove_task(task.pop())
        task.append(bar.add_task(name, total=total))

    opts = EvalOptions(
        **options, progress=phase, advance=lambda: bar.advance(task[0]) if task else None
    )
    try:
        with bar:
            report = asyncio.run(run_eval(spec, opts))
    except EvalInputError as exc:
        fail(str(exc), code=2)
    except EndpointUnavailable as exc:
        fail(f"{exc}; is it reachable?", code=3)
    except ValueError as exc:
        fail(str(exc), code=2)
    print_report(out_console, report)
    assert opts.run_dir is not None
    try:
        paths = write_reports(opts.run_dir, report)
    except OSError as exc:
        fail(f"cannot write the reports in {opts.run_dir}: {exc.strerror}", code=2)
    err_console.print(f"reports: {', '.join(str(p) for p in paths)}", markup=False)
    if register is not None:
        url, token = register
        record = admin_client(url, token).call(
            "POST", "/admin/eval-reports", content=report.to_json(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        state = "passing" if record["passed"] else "failing"
        err_console.print(
            f"registered a {state} report for {record['candidate']} with {url}", markup=False
        )
    return 0 if report.gate.passed else 1
