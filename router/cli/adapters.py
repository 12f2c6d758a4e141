"""`abgate adapters list|load|unload|swap`: the LoRA adapter lifecycle through the admin API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from router.cli.operator import DEFAULT_URL, AdminClient, Token, Url, fail


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="LoRA adapters on every vLLM replica", no_args_is_help=True)
    app.add_typer(sub, name="adapters")
    console = Console(highlight=False)

    def show(record: dict[str, Any]) -> None:
        console.print(f"{record['name']}: {record['state']} ({record['path']})", markup=False)
        for url, state in record["replicas"].items():
            reason = f" - {state['reason']}" if state.get("reason") else ""
            console.print(f"    {url}: {state['state']}{reason}", markup=False)

    @sub.command("list")
    def list_(url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Adapters with their state on each replica."""
        client = AdminClient(url, token)
        data = client.call("GET", "/admin/adapters")
        table = Table(title="adapters")
        for col in ("name", "state", "path", "replicas"):
            table.add_column(col)
        for a in data["adapters"]:
            states = ", ".join(f"{u}: {s['state']}" for u, s in a["replicas"].items())
            table.add_row(a["name"], a["state"], a["path"], states)
        console.print(table)
        client.close()

    @sub.command("load")
    def load(
        name: Annotated[str, typer.Argument(help="immutable adapter name, e.g. support-lora-v3")],
        path: Annotated[str, typer.Option("--path", help="lora_path on the replicas")],
        base_url: Annotated[
            list[str] | None, typer.Option("--base-url", help="replica (repeat for several)")
        ] = None,
        experiment: Annotated[
            str | None, typer.Option(help="load on this experiment's treatment replicas")
        ] = None,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Load on every replica and probe; exits 1 unless ready everywhere."""
        if not base_url and not experiment:
            fail("give --base-url (one or more) or --experiment", code=2)
        client = AdminClient(url, token)
        body: dict[str, Any] = {"name": name, "path": path}
        if base_url:
            body["base_urls"] = base_url
        if experiment:
            body["experiment"] = experiment
        record = client.call("POST", "/admin/adapters", json=body, timeout=600)
        client.close()
        show(record)
        if record["state"] != "ready":
            fail(f"adapter {name} is {record['state']}")

    @sub.command("unload")
    def unload(
        name: Annotated[str, typer.Argument(help="adapter name")],
        drain_seconds: Annotated[
            float, typer.Option(min=0, help="wait for in-flight requests")
        ] = 30,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Drain, then unload from every replica."""
        client = AdminClient(url, token)
        record = client.call(
            "DELETE",
            f"/admin/adapters/{name}",
            params={"drain_seconds": drain_seconds},
            timeout=drain_seconds + 120,
        )
        client.close()
        show(record)

    @sub.command("swap")
    def swap(
        experiment: Annotated[str, typer.Argument(help="experiment name")],
        treatment_model: Annotated[str, typer.Argument(help="the new, ready adapter")],
        unload_old: Annotated[
            bool, typer.Option(help="unload the old adapter once drained")
        ] = False,
        reason: Annotated[str, typer.Option(help="recorded in the audit log")] = "",
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Repoint a running experiment's treatment to another adapter, atomically."""
        client = AdminClient(url, token)
        before = client.call("GET", f"/admin/experiments/{experiment}")
        after = client.call(
            "POST",
            f"/admin/experiments/{experiment}/swap",
            json={"treatment_model": treatment_model, "unload_old": unload_old, "reason": reason},
        )
        client.close()
        console.print(
            f"{experiment}: treatment {before['treatment']['model']} -> "
            f"{after['treatment']['model']} (version {after['version']})",
            markup=False,
        )
