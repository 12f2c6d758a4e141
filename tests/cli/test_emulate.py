"""`abgate emulate` says where it listens once it is ready, with the real port when the system
chose it (`--port 0`), and that address answers."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import httpx

from tests.procs import ROOT, base_env


def test_emulate_says_where_it_listens_when_ready() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "emulate", "--port", "0", "--base-model", "base"],
        env=base_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(30, proc.kill)  # a silent emulator fails the test, not hangs it
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # waits for the line (or the process's end)
        found = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:(\d+)/v1)\n", line)
        assert found, line + (proc.stdout.read() if proc.poll() is not None else "")
        assert int(found.group(2)) > 0
        models = httpx.get(found.group(1) + "/models", timeout=5)
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "base"
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
