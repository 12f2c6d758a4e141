"""`abgate demo`: registered here, run from `router.demo` (a dev tool, imported lazily so the
gateway and the controller need none of its dependencies)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from router.cli.common import fail


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        short: Annotated[bool, typer.Option(help="faster steps and fewer users (CI)")] = False,
        reports: Annotated[Path, typer.Option(help="directory for the HTML reports")] = Path(
            "demo-reports"
        ),
        timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 300,
    ) -> None:
        """Run the whole system locally: two experiments, a controller, simulated users."""
        import importlib.util

        if importlib.util.find_spec("openai") is None:  # the simulated users' client (dev extra)
            fail(
                "the demo needs 'openai', part of the dev extra: pip install -e '.[dev]' "
                "from a checkout",
                code=2,
            )
        from router.demo.run import run

        raise typer.Exit(run(short=short, reports=reports, timeout=timeout))
