"""`abgate emulate`: run the vLLM emulator (serving.emulator); its flags are parsed by argparse.

The emulator (uvicorn and the app) is imported when the command runs, not when `abgate`
starts."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "emulate",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def emulate(ctx: typer.Context) -> None:
        """Run a vLLM-compatible emulator (no GPU needed); `abgate emulate --help` for flags."""
        import argparse

        from serving.emulator import cli as emulator_cli

        parser = argparse.ArgumentParser(
            prog="abgate emulate",
            description="Serve vLLM's OpenAI-compatible API with deterministic answers.",
        )
        emulator_cli.add_arguments(parser)
        raise typer.Exit(emulator_cli.run(parser.parse_args(ctx.args)))
