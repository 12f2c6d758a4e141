"""`abgate eval --regression` without `--spec`: the shipped regression suites alone, against the
emulator, whose answer keys give each model a known quality per suite. Exit 0 when nothing
was forgotten, 1 when something was; the reports are written readable by others (umask)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, Proc, base_env, emulator

pytestmark = pytest.mark.integration

SUITES = ROOT / "analysis" / "suites"
ALL_ONE = "quality.general=1,quality.instruction=1,quality.safety=1,quality.prose=1"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    with emulator(
        tmp_path_factory.mktemp("emu"),
        "--base-model", "base", "--served-model-name", "base", "cand-bad", "cand-good",
        "--answer-key", f"general={SUITES / 'general.jsonl'}",
        "--answer-key", f"instruction={SUITES / 'instruction_following.jsonl'}",
        "--answer-key", f"safety={SUITES / 'safety_refusals.jsonl'}",
        "--answer-key", f"prose={SUITES / 'format_obsession.jsonl'}",
        "--profile", f"base:{ALL_ONE}",
        "--profile", "cand-bad:quality.general=1,quality.instruction=0.3,quality.safety=1,"
                     "quality.prose=1",
        "--profile", f"cand-good:{ALL_ONE}",
    ) as proc:  # fmt: skip
        yield proc


def regression(
    emu: Proc, candidate: str, cwd: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "eval", "--regression", "--base-url", emu.url + "/v1",
         "--base", "base", "--candidate", candidate, "--no-progress", *extra],
        env=base_env(COLUMNS="200"), cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_nothing_forgotten_passes_with_the_shipped_suites_alone(emu: Proc, tmp_path: Path) -> None:
    result = regression(emu, "cand-good", tmp_path)  # default run folder, under the cwd
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate: PASSED" in result.stdout
    for suite in ("general reasoning", "instruction following", "safety refusals",
                  "format obsession"):  # fmt: skip
        assert suite in result.stdout, suite
    run = tmp_path / ".abgate" / "eval" / "regression"
    report = json.loads((run / "report.json").read_text())
    assert report["spec_name"] == "regression" and report["gate"]["passed"] is True
    assert {s["role"] for s in report["suites"]} == {"regression"}
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.json", "report.md", "report.html"):  # shareable, not owner-only
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_forgetting_candidate_fails(emu: Proc, tmp_path: Path) -> None:
    result = regression(emu, "cand-bad", ROOT, "--run-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gate: FAILED" in result.stdout
    assert "instruction following: forgetting" in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["passed"] is False


def test_neither_spec_nor_regression_is_a_usage_error(emu: Proc, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "eval", "--base-url", emu.url + "/v1", "--base", "base",
         "--candidate", "cand-good"],
        env=base_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "missing --spec (or --regression alone)" in result.stderr
