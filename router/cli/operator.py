"""Operator commands: they call a gateway's admin API and print what changed.

Exit codes: 0 done; 1 the gateway refused (401, 404, 409, 412, 422, 503); 2 usage error;
3 the gateway could not be reached.
"""

from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from analysis.report import Report, render_html
from offline.files import write_atomically

PROG = "abgate"
DEFAULT_URL = "http://127.0.0.1:8080"

Url = Annotated[
    str, typer.Option("--url", envvar="ABGATE_URL", help="gateway URL", show_default=True)
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="ABGATE_ADMIN_TOKEN", help="admin bearer token"),
]
Reason = Annotated[str, typer.Option("--reason", help="why (recorded in the audit log)")]
Name = Annotated[str, typer.Argument(help="experiment name")]


class AdminClient:
    """A thin client of the admin API with errors turned into one-line exits."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"X-ABGate-Actor": _actor()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def call(self, method: str, path: str, *, timeout: float = 10, **kwargs: Any) -> Any:
        try:
            resp = self._client.request(method, path, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the gateway at {self.url}: {exc.__class__.__name__}", code=3)
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200] or resp.reason_phrase
            fail(f"{resp.status_code} {resp.reason_phrase.lower()}: {message}")
        return resp.json() if resp.content else None

    def close(self) -> None:
        self._client.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True).print(f"{PROG}: error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def _share(exp: dict[str, Any]) -> str:
    return f"{exp['treatment_percent']:g}%"


def register(app: typer.Typer) -> None:
    console = Console(highlight=False)

    @app.command("status")
    def status(
        name: Annotated[str | None, typer.Argument(help="only this experiment")] = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Experiments with their arms, shares, states and counts."""
        client = AdminClient(url, token)
        data = client.call("GET", "/admin/experiments")
        rows = [s for s in data["experiments"] if name is None or s["experiment"]["name"] == name]
        if name is not None and not rows:
            fail(f"404 not found: no experiment named {name!r}")
        table = Table(title=f"experiments (config version {data['version']})")
        for col in (
            "name",
            "route",
            "state",
            "treatment",
            "control model",
            "treatment model",
            "requests c/t",
            "errors c/t",
            "feedback c/t",
        ):
            table.add_column(col)
        for row in rows:
            e, arms = row["experiment"], row["arms"]
            c, t = arms["control"], arms["treatment"]
            table.add_row(
                e["name"],
                e["route"],
                e["state"],
                _share(e),
                e["control"]["model"],
                e["treatment"]["model"],
                f"{c['requests']}/{t['requests']}",
                f"{c['errors']}/{t['errors']}",
                f"{c['feedback']}/{t['feedback']}",
            )
        console.print(table)
        client.close()

    @app.command("create")
    def create(
        file: Annotated[Path, typer.Option("-f", "--file", help="YAML or JSON experiment(s)")],
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Create the experiment(s) in FILE (one object, a list, or `experiments:`)."""
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}", code=2)
        except yaml.YAMLError as exc:
            fail(f"{file} is not valid YAML: {exc}", code=2)
        if isinstance(doc, dict) and "experiments" in doc:
            doc = doc["experiments"]
        items = doc if isinstance(doc, list) else [doc]
        if not items or not all(isinstance(i, dict) for i in items):
            fail(f"{file} must hold an experiment object, a list of them, or `experiments:`", 2)
        client = AdminClient(url, token)
        for item in items:
            exp = client.call("POST", "/admin/experiments", json=item)
            console.print(
                f"created {exp['name']}: route {exp['route']}, {exp['state']}, treatment "
                f"{_share(exp)} ({exp['treatment']['model']} vs {exp['control']['model']})"
            )
        client.close()

    @app.command("set-share")
    def set_share(
        name: Name,
        percent: Annotated[float, typer.Argument(help="treatment share in percent (0-100)")],
        reason: Reason = "",
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Set the treatment share of a live experiment."""
        if not 0 <= percent <= 100:
            fail(f"the share must be between 0 and 100, got {percent:g}", code=2)
        client = AdminClient(url, token)
        before = client.call("GET", f"/admin/experiments/{name}")
        after = client.call(
            "PATCH",
            f"/admin/experiments/{name}",
            json={"treatment_percent": percent, "reason": reason},
            headers={"If-Match": f'"{before["version"]}"'},
        )
        console.print(
            f"{name}: treatment {_share(before)} -> {_share(after)} "
            f"(version {before['version']} -> {after['version']})"
        )
        client.close()

    def lifecycle(action: str, doc: str) -> None:
        def command(
            name: Name, reason: Reason = "", url: Url = DEFAULT_URL, token: Token = None
        ) -> None:
            client = AdminClient(url, token)
            before = client.call("GET", f"/admin/experiments/{name}")
            after = client.call(
                "POST", f"/admin/experiments/{name}/{action}", json={"reason": reason}
            )
            console.print(
                f"{name}: {before['state']} -> {after['state']}, treatment "
                f"{_share(before)} -> {_share(after)}" + (f" ({reason})" if reason else "")
            )
            client.close()

        command.__doc__ = doc
        app.command(action)(command)

    lifecycle("start", "Start a draft experiment.")
    lifecycle("pause", "Pause a running experiment (the split holds; the controller waits).")
    lifecycle("resume", "Resume a paused experiment.")
    lifecycle("advance", "Move a running experiment to its next ramp step.")
    lifecycle("promote", "Promote the treatment: it serves 100 % of the route.")
    lifecycle("rollback", "Roll back: every new request of the route goes to control, at once.")

    @app.command("report")
    def report(
        name: Name,
        html_file: Annotated[
            Path | None, typer.Option("--html", help="also write a self-contained HTML report")
        ] = None,
        json_file: Annotated[Path | None, typer.Option("--json", help="write the JSON")] = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """The experiment's report: metrics, intervals, verdicts, SRM, decisions."""
        client = AdminClient(url, token)
        data = client.call("GET", f"/admin/experiments/{name}/report")
        client.close()
        rep = Report.model_validate(data)
        console.print(
            f"[bold]{rep.experiment}[/bold] ({rep.state}) route {rep.route}: "
            f"{rep.treatment_model} vs {rep.control_model} at {rep.treatment_percent:g}%; "
            f"units {rep.units['control']}/{rep.units['treatment']}"
        )
        table = Table()
        for col in (
            "metric",
            "role",
            "control",
            "treatment",
            "difference",
            "always-valid 95% CI",
            "verdict",
        ):
            table.add_column(col)
        for m in rep.metrics:
            ci = m.always_valid
            table.add_row(
                m.metric,
                m.role,
                _num(m.control),
                _num(m.treatment),
                _num(m.difference),
                "-" if ci is None else f"[{ci.low:.4g}, {ci.high:.4g}]",
                m.verdict,
            )
        console.print(table)
        srm = rep.srm
        console.print(
            f"SRM: {'MISMATCH' if srm.mismatch else 'ok'} (p = {_num(srm.p_value)})"
            if srm.status == "ok"
            else f"SRM: insufficient data ({srm.reason})"
        )
        for d in rep.decisions:
            console.print(f"  {d.action} at {d.share:g}%: {'; '.join(d.reasons)}", markup=False)
        for path, content in ((html_file, render_html(rep)), (json_file, rep.model_dump_json())):
            if path is None:
                continue
            try:
                write_atomically(path, content)  # never leave a half-written report behind
            except OSError as exc:
                fail(f"cannot write {path}: {exc.strerror}", code=2)
            console.print(f"wrote {path}")

    @app.command("audit")
    def audit(
        name: Annotated[str | None, typer.Argument(help="only this experiment")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Who changed what, when and why (newest first)."""
        client = AdminClient(url, token)
        params: dict[str, str | int] = {"limit": limit}
        if name is not None:
            params["experiment"] = name
        data = client.call("GET", "/admin/audit", params=params)
        table = Table(title="audit")
        for col in ("time (UTC)", "version", "actor", "action", "experiment", "change", "reason"):
            table.add_column(col)
        for e in data["entries"]:
            when = dt.datetime.fromtimestamp(e["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(
                when,
                str(e["version"]),
                e["actor"],
                e["action"],
                e["experiment"],
                _summarise(e["before"], e["after"]),
                e["reason"],
            )
        console.print(table)
        client.close()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _summarise(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    skip = {"version", "updated_at", "state_reason"}
    parts = [
        f"{k}: {before.get(k)!s} -> {after.get(k)!s}"
        for k in after
        if k not in skip and before.get(k) != after.get(k)
    ]
    return "; ".join(parts) or "-"
