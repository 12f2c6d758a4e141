"""`python -m bench.cli` (part of `make bench`) runs and prints its figures; the figures
themselves are measurements, not asserted, apart from no heavy module in a rollback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import ROOT, base_env

pytestmark = pytest.mark.integration


def test_cli_bench_prints_cold_start_times() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.cli", "--rounds", "2"],
        env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for needle in ("operator CLI cold start over 2 runs", "abgate --help", "abgate rollback NAME",
                   "heavy: none"):  # fmt: skip
        assert needle in out.stdout, out.stdout
