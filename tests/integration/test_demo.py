"""`make demo` tells the whole story and exits 0 (short mode, as CI runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, base_env

pytestmark = pytest.mark.integration


def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "demo",
            "--short",
            "--reports",
            str(tmp_path),
            "--timeout",
            "240",
        ],
        env=base_env(COLUMNS="160"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the better adapter was promoted and the worse one rolled back" in out.stdout
    for name in ("support-v2", "billing-v1"):
        page = (tmp_path / f"{name}.html").read_text()
        assert "<svg" in page and name in page
