"""Operator commands: they call a gateway's admin API and print what changed.

Exit codes: 0 done; 1 the gateway refused (401, 404, 409, 412, 422, 503); 2 usage error;
3 the gateway could not be reached.

A command imports its HTTP client, YAML or rich only when it runs (router/cli/common.py says
why): `abgate rollback` in an incident starts in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from router.cli.common import (
    DEFAULT_URL,
    AsJson,
    Name,
    Reason,
    Token,
    Url,
    admin_client,
    fail,
    print_json,
    say,
    share,
)

LIFECYCLE = (
    ("start", "Start a draft experiment."),
    ("pause", "Pause a running experiment (the split holds; the controller waits)."),
    ("resume", "Resume a paused experiment."),
    ("advance", "Move a running experiment to its next ramp step."),
    ("promote", "Promote the treatment: it serves 100 % of the route."),
    ("rollback", "Roll back: every new request of the route goes to control, at once."),
)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        name: Annotated[str | None, typer.Argument(help="only this experiment")] = None,
        as_json: AsJson = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Experiments with their arms, shares, states and counts."""
        data = admin_client(url, token).call("GET", "/admin/experiments")
        rows = [s for s in data["experiments"] if name is None or s["experiment"]["name"] == name]
        if name is not None and not rows:
            fail(f"404 not found: no experiment named {name!r}")
        if as_json:
            print_json({**data, "experiments": rows})
            return
        show_status(data["version"], rows)

    @app.command("create")
    def create(
        file: Annotated[Path, typer.Option("-f", "--file", help="YAML or JSON experiment(s)")],
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Create the experiment(s) in FILE (one object, a list, or `experiments:`)."""
        items = read_experiments(file)
        admin = admin_client(url, token)
        for item in items:
            exp = admin.call("POST", "/admin/experiments", json=item)
            say(
                f"created {exp['name']}: route {exp['route']}, {exp['state']}, treatment "
                f"{share(exp)} ({exp['treatment']['model']} vs {exp['control']['model']})"
            )

    @app.command("set-share")
    def set_share(
        name: Name,
        percent: Annotated[float, typer.Argument(help="treatment share in percent (0-100)")],
        reason: Reason = "",
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Set the treatment share of a live experiment (audited as `set-share`)."""
        if not 0 <= percent <= 100:
            fail(f"the share must be between 0 and 100, got {percent:g}", code=2)
        admin = admin_client(url, token)
        before = admin.call("GET", f"/admin/experiments/{name}")
        after = admin.call(
            "POST",
            f"/admin/experiments/{name}/share",
            json={"treatment_percent": percent, "reason": reason},
            headers={"If-Match": f'"{before["version"]}"'},
        )
        say(
            f"{name}: treatment {share(before)} -> {share(after)} "
            f"(version {before['version']} -> {after['version']})"
        )

    for action, doc in LIFECYCLE:
        _lifecycle(app, action, doc)

    @app.command("audit")
    def audit(
        name: Annotated[str | None, typer.Argument(help="only this experiment")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
        as_json: AsJson = False,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Who changed what, when and why (newest first)."""
        params: dict[str, str | int] = {"limit": limit}
        if name is not None:
            params["experiment"] = name
        data = admin_client(url, token).call("GET", "/admin/audit", params=params)
        if as_json:
            print_json(data)
            return
        show_audit(data["entries"])


def _lifecycle(app: typer.Typer, action: str, doc: str) -> None:
    def command(
        name: Name, reason: Reason = "", url: Url = DEFAULT_URL, token: Token = None
    ) -> None:
        admin = admin_client(url, token)
        before = admin.call("GET", f"/admin/experiments/{name}")
        after = admin.call("POST", f"/admin/experiments/{name}/{action}", json={"reason": reason})
        say(
            f"{name}: {before['state']} -> {after['state']}, treatment "
            f"{share(before)} -> {share(after)}" + (f" ({reason})" if reason else "")
        )

    command.__doc__ = doc
    app.command(action)(command)


def read_experiments(file: Path) -> list[dict[str, Any]]:
    """The experiment objects of a YAML or JSON file: one, a list, or under `experiments:`."""
    import yaml

    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", code=2)
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}".replace("\n", " "), code=2)
    if isinstance(doc, dict) and "experiments" in doc:
        doc = doc["experiments"]
    items = doc if isinstance(doc, list) else [doc]
    if not items or not all(isinstance(i, dict) for i in items):
        fail(f"{file} must hold an experiment object, a list of them, or `experiments:`", 2)
    return items


def show_status(version: int, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console

    from router.cli.tables import Column, fitted

    columns = [
        Column("name"), Column("route"), Column("state"), Column("share", justify="right"),
        Column("requests c/t", justify="right"), Column("errors c/t", "extra", "right"),
        Column("feedback c/t", "extra", "right"), Column("control model", "extra"),
        Column("treatment model", "extra"),
    ]  # fmt: skip
    cells = []
    for row in rows:
        e, arms = row["experiment"], row["arms"]
        c, t = arms["control"], arms["treatment"]
        cells.append(
            [
                e["name"], e["route"], e["state"], share(e),
                f"{c['requests']}/{t['requests']}", f"{c['errors']}/{t['errors']}",
                f"{c['feedback']}/{t['feedback']}", e["control"]["model"], e["treatment"]["model"],
            ]
        )  # fmt: skip
    console = Console(highlight=False)
    console.print(fitted(console, columns, cells, title=f"experiments (config version {version})"))


def show_audit(entries: list[dict[str, Any]]) -> None:
    import datetime as dt

    from rich.console import Console

    from router.cli.tables import Column, fitted

    columns = [
        Column("time (UTC)", "text"), Column("version", "extra", "right"), Column("actor"),
        Column("action"), Column("experiment"), Column("change (reason)", "text"),
    ]  # fmt: skip
    cells = []
    for e in entries:
        when = dt.datetime.fromtimestamp(e["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        change = summarise(e["before"], e["after"])
        if e["reason"]:
            change += f" ({e['reason']})"
        cells.append([when, str(e["version"]), e["actor"], e["action"], e["experiment"], change])
    console = Console(highlight=False)
    console.print(fitted(console, columns, cells, title="audit"))


def summarise(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    skip = {"version", "updated_at", "state_reason", "resumed_at", "period"}
    parts = [
        f"{k}: {before.get(k)!s} -> {after.get(k)!s}"
        for k in after
        if k not in skip and before.get(k) != after.get(k)
    ]
    return "; ".join(parts) or "-"
