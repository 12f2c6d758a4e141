"""`abgate adapters list|load|unload|swap`: the LoRA adapter lifecycle through the admin API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from router.cli.common import DEFAULT_URL, AsJson, Token, Url, admin_client, fail, print_json, say

START = "loaded by the server at its start"


def show(record: dict[str, Any]) -> None:
    origin = f"; {START}" if record.get("origin") == "server_start" else ""
    say(f"{record['name']}: {record['state']} ({record['path']}{origin})")
    for url, state in record["replicas"].items():
        reason = f" - {state['reason']}" if state.get("reason") else ""
        say(f"    {url}: {state['state']}{reason}")


def show_list(adapters: list[dict[str, Any]]) -> None:
    from rich.console import Console

    from router.cli.tables import Column, fitted

    columns = [Column("name"), Column("state"), Column("replicas", "text"), Column("path", "text")]
    rows = [
        [
            a["name"],
            a["state"],
            "\n".join(f"{u}: {s['state']}" for u, s in a["replicas"].items()),
            a["path"] + (f"\n{START}" if a.get("origin") == "server_start" else ""),
        ]
        for a in adapters
    ]
    console = Console(highlight=False)
    console.print(fitted(console, columns, rows, title="adapters"))


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="LoRA adapters on every vLLM replica", no_args_is_help=True)
    app.add_typer(sub, name="adapters")

    @sub.command("list")
    def list_(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Adapters with their state on each replica, including those a server loaded at its
        start (vLLM's --lora-modules)."""
        data = admin_client(url, token).call("GET", "/admin/adapters")
        if as_json:
            print_json(data)
        else:
            show_list(data["adapters"])

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
        admin = admin_client(url, token)
        body: dict[str, Any] = {"name": name, "path": path}
        if base_url:
            body["base_urls"] = base_url
        if experiment:
            body["experiment"] = experiment
        record = admin.call("POST", "/admin/adapters", json=body, timeout=600)
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
        record = admin_client(url, token).call(
            "DELETE",
            f"/admin/adapters/{name}",
            params={"drain_seconds": drain_seconds},
            timeout=drain_seconds + 120,
        )
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
        """Repoint a running experiment's treatment to another adapter, atomically. With
        --unload-old the old adapter is unloaded once drained, also one the server loaded at its
        start; refused when the old treatment model is not an adapter (the base model)."""
        admin = admin_client(url, token)
        before = admin.call("GET", f"/admin/experiments/{experiment}")
        after = admin.call(
            "POST",
            f"/admin/experiments/{experiment}/swap",
            json={"treatment_model": treatment_model, "unload_old": unload_old, "reason": reason},
        )
        say(
            f"{experiment}: treatment {before['treatment']['model']} -> "
            f"{after['treatment']['model']} (version {after['version']})"
        )
