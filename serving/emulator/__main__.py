"""``python -m serving.emulator``: run the vLLM emulator (same flags as ``abgate emulate``)."""

from __future__ import annotations

import argparse
import logging
import sys

from serving.emulator.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, configure logging and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.emulator",
        description="A stand-in for vLLM's OpenAI-compatible server, without a GPU.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
