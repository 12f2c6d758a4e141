"""What every operator command shares: the option types, the one-line failure, JSON output.

This module is imported when the `abgate` command starts, for every command (typer reads the
option types when it builds the command line), so it imports nothing but typer and the standard
library: a command pays for the HTTP client, rich, YAML or the analysis only when it runs and
uses them (`tests/cli/test_imports.py` checks it).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from router.cli.client import AdminClient

PROG = "abgate"
DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_HELP = "pass --token or set ABGATE_ADMIN_TOKEN"

Url = Annotated[
    str, typer.Option("--url", envvar="ABGATE_URL", help="gateway URL", show_default=True)
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="ABGATE_ADMIN_TOKEN", help="admin bearer token"),
]
Reason = Annotated[str, typer.Option("--reason", help="why (recorded in the audit log)")]
Name = Annotated[str, typer.Argument(help="experiment name")]
AsJson = Annotated[
    bool, typer.Option("--json", help="print the admin API's JSON instead of a table")
]


def admin_client(url: str, token: str | None) -> AdminClient:
    """The admin API client, imported when a command first needs it."""
    from router.cli.client import AdminClient

    return AdminClient(url, token)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit: 1 refused, 2 usage, 3 unreachable (plain print: a
    terminal-wide wrap would break the one line scripts grep)."""
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """The admin API's answer as indented JSON on stdout, for scripts (`jq` and the like)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def say(line: str) -> None:
    """A plain line on stdout: no markup, no highlighting, no wrapping of what the gateway or
    the operator wrote (a reason with brackets is printed as typed)."""
    print(line, flush=True)


def share(exp: dict[str, Any]) -> str:
    return f"{exp['treatment_percent']:g}%"
