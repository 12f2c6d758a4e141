"""The benchmarks run and print their figures (smoke runs: short and unpinned; the figures
themselves are not asserted, they are measurements, not pass/fail timings)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import ROOT, base_env

pytestmark = pytest.mark.integration


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", *args],
        env=base_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_gateway_bench_prints_its_table() -> None:
    text = _run("bench.gateway", "--quick", "--no-nginx", "--no-pin", "--loadgen", "python")
    for needle in ("rps @32 conns", "p99 @1 conn (ms)", "CPU us/request", "RSS MiB", "targets"):
        assert needle in text, needle


def test_rollback_bench_prints_p50_and_p99() -> None:
    text = _run("bench.rollback", "--rounds", "3")
    assert "rollback propagation over 3 rollbacks" in text and "p99" in text


def test_feedback_bench_prints_throughput_and_memory() -> None:
    text = _run("bench.feedback", "--seconds", "1", "--units", "2000")
    assert "feedback posts/s" in text and "per 100,000 units" in text


def test_redaction_bench_prints_its_growth_table() -> None:
    text = _run("bench.redact", "--sizes", "1000,10000", "--repeat", "1")
    assert "redaction, best of 1" in text and "hex run" in text and "for 10x size" in text
