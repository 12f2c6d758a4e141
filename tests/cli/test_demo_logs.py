"""A failed demo keeps its folder of logs and says where; a successful one cleans up.

The failure is a real one: `--timeout 0` gives the simulated users no time, so neither
experiment reaches its expected end state and the demo exits 1 (the full, successful run is
tests/integration/test_demo.py)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from router.demo.run import Workdir
from tests.procs import ROOT, base_env


def test_the_folder_goes_on_success_and_stays_on_failure() -> None:
    out = io.StringIO()
    with Workdir(Console(file=out)) as good:
        (good.path / "gateway.log").write_text("fine")
        good.ok = True
    assert not good.path.exists() and out.getvalue() == ""

    with Workdir(Console(file=out, width=300)) as bad:
        (bad.path / "gateway.log").write_text("it broke")
    assert bad.path.exists()
    assert f"the demo's logs are kept in {bad.path} (gateway.log)" in out.getvalue()

    with pytest.raises(KeyboardInterrupt), Workdir(Console(file=out)) as stopped:
        stopped.ok = True  # success so far, then interrupted: keep the logs
        raise KeyboardInterrupt
    assert stopped.path.exists()
    for path in (bad.path, stopped.path):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()


@pytest.mark.integration
def test_a_failed_demo_keeps_its_logs_and_prints_where(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--short", "--timeout", "0",
         "--reports", str(tmp_path / "reports")],
        env=base_env(COLUMNS="300", TMPDIR=str(tmp)), cwd=ROOT, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    found = re.search(r"the demo's logs are kept in (\S+) \(([^)]*)\)", out.stdout)
    assert found, out.stdout[-3000:]
    kept = Path(found.group(1))
    assert kept.parent == tmp and kept.is_dir()
    for log in ("emulator.log", "gateway.log", "controller.log", "redis/redis.log"):
        assert (kept / log).is_file(), log
        assert log in found.group(2)
