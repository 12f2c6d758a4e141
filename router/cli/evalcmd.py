"""`abgate eval`: the offline gate, base vs fine-tune, before any user sees the fine-tune.

Exit codes: 0 the gate passed; 1 the gate failed (or the gateway refused the registration);
2 bad input (spec, cases, training file, options); 3 the model endpoint could not be reached.

`--regression` without `--spec` runs the shipped regression suites alone: did the fine-tune
forget anything? The flags are checked here; the run itself (router/cli/evalrun.py) and its
statistics are imported only once they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli.common import DEFAULT_URL, AsJson, Token, Url, admin_client, fail, print_json

_URL = re.compile(r"^https?://[^\s/?#]+[^\s?#]*$")
REGRESSION_ONLY = "regression"  # the report's name and run folder without a spec


def _check(
    spec: Path | None, regression: bool, base_url: str | None, base: str | None,
    candidate: str | None, candidate_url: str | None, judge_url: str | None,
) -> None:  # fmt: skip
    given = {"--base-url": base_url, "--base": base, "--candidate": candidate}
    missing = [flag for flag, value in given.items() if not value]
    if spec is None and not regression:
        missing.insert(0, "--spec (or --regression alone)")
    if missing:
        fail(f"missing {', '.join(missing)} (see abgate eval --help)", code=2)
    for flag, value in (("--base-url", base_url), ("--candidate-url", candidate_url),
                        ("--judge-url", judge_url)):  # fmt: skip
        if value is not None and not _URL.match(value):
            fail(f"{flag} must be an http(s) URL such as http://vllm:8000/v1, not {value!r}", 2)
    if base == candidate and (candidate_url or base_url) == base_url:
        fail("--base and --candidate name the same model on the same endpoint", code=2)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="The offline gate: base vs fine-tuned on held-out suites, with a verdict table",
        invoke_without_command=True,
    )
    app.add_typer(sub, name="eval")

    @sub.callback()
    def evaluate(
        ctx: typer.Context,
        spec: Annotated[
            Path | None, typer.Option(help="eval spec (YAML); optional with --regression")
        ] = None,
        base_url: Annotated[
            str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
        ] = None,
        base: Annotated[str | None, typer.Option(help="the base model")] = None,
        candidate: Annotated[str | None, typer.Option(help="the fine-tuned model")] = None,
        candidate_url: Annotated[
            str | None, typer.Option(help="the candidate's base URL (default: --base-url)")
        ] = None,
        regression: Annotated[
            bool,
            typer.Option(
                "--regression", help="add the shipped regression suites (alone without --spec)"
            ),
        ] = False,
        train: Annotated[
            Path | None, typer.Option(help="training JSONL to check for contamination")
        ] = None,
        run_dir: Annotated[
            Path | None,
            typer.Option(
                help="outputs cache and reports (default .abgate/eval/<spec name>, or "
                ".abgate/eval/regression)"
            ),
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

        Subcommands: `freeze` pins the cases and graders of a spec; `reports` lists the reports
        registered with a gateway."""
        if ctx.invoked_subcommand is not None:
            return
        _check(spec, regression, base_url, base, candidate, candidate_url, judge_url)
        from router.cli.evalrun import evaluate as run

        out = run_dir or Path(".abgate") / "eval" / (spec.stem if spec else REGRESSION_ONLY)
        raise typer.Exit(
            run(
                spec, progress=progress, register=(url, token) if register_report else None,
                base_url=base_url, base=base, candidate=candidate, candidate_url=candidate_url,
                judge_url=judge_url, api_key=api_key, judge_api_key=judge_api_key,
                regression=regression, train=train, run_dir=out, concurrency=concurrency,
                retries=retries, timeout=timeout, fresh=fresh,
            )
        )  # fmt: skip

    @sub.command("freeze")
    def freeze_cmd(
        spec: Annotated[Path, typer.Option(help="eval spec (YAML)")],
    ) -> None:
        """Pin the spec's cases and grader configuration (writes <spec>.frozen.json); later
        runs fail the gate if either changes."""
        from analysis.eval.types import EvalInputError
        from offline.runner import freeze, frozen_path

        try:
            doc = freeze(spec)
        except EvalInputError as exc:
            fail(str(exc), code=2)
        n = sum(s["n"] for s in doc["suites"].values())
        typer.echo(
            f"froze {n} cases in {len(doc['suites'])} suites: fingerprint "
            f"{doc['fingerprint'][:16]}, grader config {doc['grader_config_hash'][:16]}"
        )
        typer.echo(f"wrote {frozen_path(spec)}", err=True)

    @sub.command("reports")
    def reports(
        model: Annotated[str | None, typer.Option(help="only this candidate model")] = None,
        as_json: AsJson = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """The eval reports registered with the gateway (the newest per candidate model)."""
        params = {"model": model} if model else None
        data = admin_client(url, token).call("GET", "/admin/eval-reports", params=params)
        if as_json:
            print_json(data)
        else:
            show_reports(data["reports"])


def show_reports(records: list[dict[str, Any]]) -> None:
    from rich.console import Console

    from router.cli.tables import Column, fitted

    columns = [
        Column("candidate"), Column("base"), Column("gate"), Column("reasons", "text"),
        Column("spec", "extra"), Column("finished", "extra"),
    ]  # fmt: skip
    rows = [
        [
            r["candidate"], r["base"], "passed" if r["passed"] else "FAILED",
            "; ".join(r["reasons"]) or "-", r["spec"], r["finished_at"],
        ]
        for r in records
    ]  # fmt: skip
    console = Console(highlight=False)
    console.print(fitted(console, columns, rows, title="registered eval reports"))
