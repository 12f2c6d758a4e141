"""`abgate`: entrypoint and sub-command table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from router.cli import demo, emulate, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abgate", description="A/B gateway for LLM fine-tunes (see README.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, emulate, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
