"""`abgate`: the command-line entrypoint (typer). One module per command group.

Every command module is imported here, to declare its commands, and each imports only typer and
the standard library at that point; what a command needs (the HTTP client, rich, the server
stack, the statistics) it imports when it runs. So `abgate rollback` in an incident pays for
the rollback alone (bench/cli.py measures it; tests/cli/test_imports.py keeps it so).
"""

from __future__ import annotations

import typer

from router.cli import (
    adapters,
    configure,
    controller,
    demo,
    emulate,
    evalcmd,
    flywheel,
    operator,
    report,
    serve,
)

app = typer.Typer(
    name="abgate",
    help="A/B gateway for LLM fine-tunes (see README.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (serve, controller, emulate, demo, operator, report, adapters, evalcmd, flywheel):
    module.register(app)
configure.register(app)  # `capture` and `policy`


def main() -> None:
    app(prog_name="abgate")  # also under `python -m router`


if __name__ == "__main__":
    main()
