"""`abgate`: the command-line entrypoint (typer). One module per command group."""

from __future__ import annotations

import typer

from router.cli import adapters, controller, demo, emulate, evalcmd, flywheel, operator, serve

app = typer.Typer(
    name="abgate",
    help="A/B gateway for LLM fine-tunes (see README.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (serve, controller, emulate, demo, operator, adapters, evalcmd, flywheel):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
