"""`abgate flywheel`: captured production failures become the next eval cases.

`export` reads an experiment's captured requests (opt-in, redacted at capture) through the admin
API, keeps those that received one of the chosen signals, drops any whose input already is in an
existing eval file, and writes the rest as eval cases (router/cli/flywheel_export.py); the file
is written whole or not at all. `captures` shows what was captured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli.common import DEFAULT_URL, AsJson, Token, Url, admin_client, fail, print_json

Signals = Annotated[str, typer.Option(help="comma-separated; captures that received any of them")]
Arm = Annotated[str | None, typer.Option(help="only this arm (control or treatment)")]
Limit = Annotated[int, typer.Option(min=1, max=100_000, help="newest captures to read")]
ExperimentName = Annotated[str, typer.Argument(help="experiment name")]


def _read(
    name: str, signals: str, arm: str | None, limit: int, url: str, token: str | None
) -> dict[str, Any]:
    wanted = [s.strip() for s in signals.split(",") if s.strip()]
    if arm not in (None, "control", "treatment"):
        fail(f"--arm must be control or treatment, not {arm!r}", code=2)
    params: dict[str, Any] = {"limit": limit}
    if wanted:
        params["signals"] = ",".join(wanted)
    if arm:
        params["arm"] = arm
    data: dict[str, Any] = admin_client(url, token).call(
        "GET", f"/admin/experiments/{name}/captures", params=params
    )
    return data


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="The data flywheel: production failures -> eval cases", no_args_is_help=True
    )
    app.add_typer(sub, name="flywheel")

    @sub.command("export")
    def export(
        name: ExperimentName,
        out: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
        signals: Signals = "thumbs_down,escalation,regenerated",
        against: Annotated[
            list[Path] | None,
            typer.Option(
                "--against", help="eval JSONL files or specs to deduplicate against (repeatable)"
            ),
        ] = None,
        arm: Arm = None,
        limit: Limit = 10_000,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Write NAME's captured requests that drew the given signals as eval cases."""
        from offline.files import write_atomically
        from router.cli.flywheel_export import existing_inputs, export_cases

        if not any(s.strip() for s in signals.split(",")):
            fail("--signals names no signal", code=2)
        seen = existing_inputs(list(against or []))  # a bad --against fails before any call
        data = _read(name, signals, arm, limit, url, token)
        content, written, skipped = export_cases(data["items"], seen)
        try:
            write_atomically(out, content)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}", code=2)
        typer.echo(
            f"wrote {written} cases to {out} ({skipped} duplicates or unusable skipped, "
            f"{len(data['items'])} captures matched)",
            err=True,
        )

    @sub.command("captures")
    def captures(
        name: ExperimentName,
        signals: Signals = "",
        arm: Arm = None,
        limit: Limit = 50,
        as_json: AsJson = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """NAME's captured requests (newest first) with the signals they received."""
        data = _read(name, signals, arm, limit, url, token)
        if as_json:
            print_json(data)
        else:
            show_captures(data["items"])


def show_captures(items: list[dict[str, Any]]) -> None:
    import datetime as dt

    from rich.console import Console

    from router.cli.tables import Column, fitted

    columns = [
        Column("time (UTC)", "text"), Column("request"), Column("arm"),
        Column("signals", "text"), Column("input", "text"), Column("model", "extra"),
    ]  # fmt: skip
    rows = []
    for item in items:
        when = dt.datetime.fromtimestamp(item["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [
                when, item["request_id"], item["arm"], ", ".join(item["signals"]) or "-",
                _last_user_turn(item.get("input")), item.get("model", ""),
            ]
        )  # fmt: skip
    console = Console(highlight=False)
    console.print(fitted(console, columns, rows, title=f"captures ({len(items)})"))


def _last_user_turn(raw: Any, limit: int = 160) -> str:
    """What the user asked last, shortened for a table (`--json` has the whole exchange)."""
    text = raw if isinstance(raw, str) else ""
    if isinstance(raw, list):
        users = [m.get("content") for m in raw if isinstance(m, dict) and m.get("role") == "user"]
        text = users[-1] if users and isinstance(users[-1], str) else ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
