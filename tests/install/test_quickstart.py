"""The README's quick start, followed as a newcomer would, command by command.

The test reads the quick start's code blocks from README.md in order: each `sh` command is run
(in a clean virtualenv, from a fresh copy of the checkout), the `yaml` block is written to the
file the text before it names, and the `python` block is run as the application. Only the
ports (free ones instead of 8000 and 8080) and the adapter's path are replaced, so the README
cannot drift from what works.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from router.runtime.embedded_redis import free_port, stop_process
from tests.install.shipped import INSTALL_TIMEOUT, Venv, cached_venv, source_copy
from tests.procs import ROOT, adapter_dir, base_env

pytestmark = pytest.mark.integration

#: long-running commands of the quick start, and the path that answers 200 once they are up
SERVERS = {"emulate": "/health", "serve": "/readyz"}
#: what the test replaces in the README's text (each must be there)
PLACEHOLDERS = ("8000", "8080", "/path/to/adapter")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    file: str | None  # the file a block is to be written to ("... `abgate.yaml`:")


def quickstart() -> list[Block]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for m in re.finditer(r"^```(\w+)\n(.*?)^```$", section, re.S | re.M):
        before = section[: m.start()].rstrip().splitlines()[-1]
        named = re.search(r"`([\w.-]+)`:$", before)
        blocks.append(Block(m.group(1), m.group(2), named.group(1) if named else None))
    return blocks


def commands(script: str) -> Iterator[tuple[list[str], bool]]:
    """(argv, runs in the background) of each command of a shell block."""
    for line in script.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            background = argv[-1] == "&"
            yield (argv[:-1] if background else argv), background


def test_the_quick_start_installs_from_the_checkout() -> None:
    """abgate is not on a package index: every install of the quick start is from `.`."""
    blocks = quickstart()
    assert [b.lang for b in blocks].count("python") == 1
    installs = [
        argv[2:]
        for b in blocks
        if b.lang == "sh"
        for argv, _ in commands(b.text)
        if argv[:2] == ["pip", "install"]
    ]
    assert installs and all(arg.startswith(".") for args in installs for arg in args), installs
    text = "\n".join(b.text for b in blocks)
    for placeholder in PLACEHOLDERS:
        assert placeholder in text, placeholder


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready:\n{log.read_text()[-3000:]}")


def _run(
    argv: list[str], venv: Venv, cwd: Path, servers: ExitStack, tmp: Path
) -> subprocess.CompletedProcess[str] | None:
    """One command of a shell block, run from the virtualenv as a user with it activated."""
    assert argv[0] in {"pip", "abgate"}, f"the test does not know how to follow {argv}"
    if argv[0] == "abgate" and argv[1] in SERVERS:
        port = argv[argv.index("--port") + 1]
        log = tmp / f"{argv[1]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [venv.bin(argv[0]), *argv[1:]], cwd=cwd, env=venv.env(), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        servers.callback(stop_process, proc, 20)
        _wait_ready(proc, f"http://127.0.0.1:{port}{SERVERS[argv[1]]}", log)
        return None
    out = venv.run(*argv, cwd=cwd, timeout=INSTALL_TIMEOUT)
    assert out.returncode == 0, (argv, out.stdout[-3000:], out.stderr[-3000:])
    return out


def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    replace = {"8000": str(free_port()), "8080": str(free_port()),
               "/path/to/adapter": str(adapter_dir(tmp_path, "support-lora-v2"))}  # fmt: skip
    pattern = re.compile("|".join(rf"(?<!\d){re.escape(p)}(?!\d)" for p in replace))
    blocks = [
        Block(b.lang, pattern.sub(lambda m: replace[m.group(0)], b.text), b.file)
        for b in quickstart()
    ]
    checkout = source_copy(tmp_path / "abgate")  # what a fresh clone holds of the package
    installs = "\n".join(b.text for b in blocks if b.lang == "sh" and "pip install" in b.text)
    with cached_venv("quickstart", installs) as venv, ExitStack() as servers:
        printed = ""
        for block in blocks:
            if block.lang == "sh":
                for argv, _background in commands(block.text):
                    _run(argv, venv, checkout, servers, tmp_path)
            elif block.lang == "yaml":
                assert block.file, "the text before a yaml block names its file"
                (checkout / block.file).write_text(block.text)
            elif block.lang == "python":  # the application: the openai client of the dev extra
                out = subprocess.run(
                    [sys.executable, "-c", block.text], cwd=tmp_path, env=base_env(),
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert out.returncode == 0, out.stderr
                printed = out.stdout
        arm, request_id, answer = printed.split(maxsplit=2)
        assert arm in {"control", "treatment"} and request_id.startswith("req_"), printed
        assert answer.strip()
