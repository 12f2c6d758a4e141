"""`abgate eval`: the offline gate, base vs fine-tune, before any user sees the fine-tune.

Exit codes: 0 the gate passed; 1 the gate failed (or the gateway refused the registration);
2 bad input (spec, cases, training file, options); 3 the model endpoint could not be reached.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

import typer
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
from offline.runner import EndpointUnavailable, EvalOptions, freeze, frozen_path, run_eval
from router.cli.operator import DEFAULT_URL, AdminClient, Token, Url, fail

_URL = re.compile(r"^https?://[^\s/?#]+[^\s?#]*$")
_VERDICT_STYLE = {
    "win": "bold green",
    "acceptable": "green",
    "watch": "yellow",
    "forgetting": "bold red",
    "no improvement": "red",
    "inconclusive": "yellow",
    "incomplete": "bold red",
}


def _print_report(console: Console, report: EvalReport) -> None:
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


def _write_reports(out: Path, report: EvalReport) -> list[Path]:
    paths = [out / "report.json", out / "report.md", out / "report.html"]
    texts = [report.to_json(), render_markdown(report), render_html(report)]
    for path, text in zip(paths, texts, strict=True):
        write_atomically(path, text.rstrip("\n") + "\n")
    return paths


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="The offline gate: base vs fine-tuned on held-out suites, with a verdict table",
        invoke_without_command=True,
    )
    app.add_typer(sub, name="eval")
    out_console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)

    @sub.callback()
    def evaluate(
        ctx: typer.Context,
        spec: Annotated[Path | None, typer.Option(help="eval spec (YAML)")] = None,
        base_url: Annotated[
            str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
        ] = None,
        base: Annotated[str | None, typer.Option(help="the base model")] = None,
        candidate: Annotated[str | None, typer.Option(help="the fine-tuned model")] = None,
        candidate_url: Annotated[
            str | None, typer.Option(help="the candidate's base URL (default: --base-url)")
        ] = None,
        regression: Annotated[
            bool, typer.Option("--regression", help="add the shipped regression suites")
        ] = False,
        train: Annotated[
            Path | None, typer.Option(help="training JSONL to check for contamination")
        ] = None,
        run_dir: Annotated[
            Path | None,
            typer.Option(help="outputs cache and reports (default .abgate/eval/<spec name>)"),
        ] = None,
        concurrency: Annotated[int, typer.Option(min=1, max=512)] = 8,
        retries: Annotated[int, typer.Option(min=0, max=20)] = 4,
        timeout: Annotated[float, typer.Option(min=1, help="seconds per call")] = 120.0,
        api_key: Annotated[
            str | None, typer.Option(envvar="ABGATE_EVAL_API_KEY", help="model endpoint key")
        ] = None,
        judge_url: Annotated[
            str | None, typer.Option(help="the LLM judge's base URL (default: the spec's)")
        ] = None,
        judge_api_key: Annotated[str | None, typer.Option(envvar="ABGATE_JUDGE_API_KEY")] = None,
        register_report: Annotated[
            bool,
            typer.Option("--register", help="register the report with the gateway (admin API)"),
        ] = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
        progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
        fresh: Annotated[
            bool, typer.Option("--fresh", help="call everything again (ignore cached outputs)")
        ] = False,
    ) -> None:
        """Run base and candidate over every suite, grade, compare, print the verdict table.

        Subcommand `freeze` pins the cases and graders of a spec."""
        if ctx.invoked_subcommand is not None:
            return
        given = {"--spec": spec, "--base-url": base_url, "--base": base, "--candidate": candidate}
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            fail(f"missing {', '.join(missing)} (see abgate eval --help)", code=2)
        assert spec is not None and base_url is not None and base and candidate
        for flag, value in (("--base-url", base_url), ("--candidate-url", candidate_url),
                            ("--judge-url", judge_url)):  # fmt: skip
            if value is not None and not _URL.match(value):
                fail(f"{flag} must be an http(s) URL such as http://vllm:8000/v1, not {value!r}", 2)
        if base == candidate and (candidate_url or base_url) == base_url:
            fail("--base and --candidate name the same model on the same endpoint", code=2)
        out = run_dir or Path(".abgate") / "eval" / spec.stem
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

        options = EvalOptions(
            base_url=base_url, base=base, candidate=candidate, candidate_url=candidate_url,
            judge_url=judge_url, api_key=api_key, judge_api_key=judge_api_key,
            regression=regression, train=train, run_dir=out, concurrency=concurrency,
            retries=retries, timeout=timeout, progress=phase, fresh=fresh,
            advance=lambda: bar.advance(task[0]) if task else None,
        )  # fmt: skip
        try:
            with bar:
                report = asyncio.run(run_eval(spec, options))
        except EvalInputError as exc:
            fail(str(exc), code=2)
        except EndpointUnavailable as exc:
            fail(f"{exc}; is it reachable?", code=3)
        except ValueError as exc:
            fail(str(exc), code=2)
        _print_report(out_console, report)
        paths = _write_reports(out, report)
        err_console.print(f"reports: {', '.join(str(p) for p in paths)}", markup=False)
        if register_report:
            client = AdminClient(url, token)
            record = client.call(
                "POST", "/admin/eval-reports", content=report.to_json(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            client.close()
            state = "passing" if record["passed"] else "failing"
            err_console.print(
                f"registered a {state} report for {record['candidate']} with {url}", markup=False
            )
        raise typer.Exit(0 if report.gate.passed else 1)

    @sub.command("freeze")
    def freeze_cmd(
        spec: Annotated[Path, typer.Option(help="eval spec (YAML)")],
    ) -> None:
        """Pin the spec's cases and grader configuration (writes <spec>.frozen.json); later
        runs fail the gate if either changes."""
        try:
            doc = freeze(spec)
        except EvalInputError as exc:
            fail(str(exc), code=2)
        n = sum(s["n"] for s in doc["suites"].values())
        out_console.print(
            f"froze {n} cases in {len(doc['suites'])} suites: fingerprint "
            f"{doc['fingerprint'][:16]}, grader config {doc['grader_config_hash'][:16]}",
            markup=False,
        )
        err_console.print(f"wrote {frozen_path(spec)}", markup=False)
