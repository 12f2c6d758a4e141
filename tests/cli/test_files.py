"""Reports and eval files are written with the user's umask, as an ordinary `open()` would
(0644 by default), not owner-only; a file that exists keeps the mode someone gave it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.files import write_atomically
from tests.procs import ROOT, base_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask(umask: None, tmp_path: Path, mask: int, expected: int) -> None:
    os.umask(mask)
    target = tmp_path / "deep" / "report.html"
    write_atomically(target, "<html></html>")
    assert target.read_text() == "<html></html>"
    assert _mode(target) == expected
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary left


def test_a_replaced_file_keeps_its_mode(umask: None, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("{}")
    target.chmod(0o640)
    write_atomically(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}' and _mode(target) == 0o640


def test_the_default_umask_gives_0644_in_a_fresh_process(tmp_path: Path) -> None:
    """As a user's shell runs it: the umask of a new process (022 here), nothing set in-test."""
    target = tmp_path / "r.txt"
    code = "from pathlib import Path; from offline.files import write_atomically; " \
           f"write_atomically(Path({str(target)!r}), 'x')"  # fmt: skip
    subprocess.run(
        ["sh", "-c", f'umask 022 && exec "{sys.executable}" -c "$0"', code],
        env=base_env(), cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip
    assert _mode(target) == 0o644
