"""`abgate emulate`: run the vLLM emulator (serving.emulator)."""

from __future__ import annotations

import argparse
from typing import Any

from serving.emulator import cli as emulator_cli


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "emulate",
        help="run a vLLM-compatible emulator (no GPU needed)",
        description="Serve vLLM's OpenAI-compatible API with deterministic answers.",
    )
    emulator_cli.add_arguments(p)
    p.set_defaults(handler=emulator_cli.run)
