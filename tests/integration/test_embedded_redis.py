"""`abgate serve` without ABGATE_REDIS_URL runs on a private redis-server and stops it on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from router.runtime.embedded_redis import free_port
from tests.procs import ROOT, base_env, experiment, write_config

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids.extend(int(k) for k in text)
    return kids


def test_serve_starts_and_stops_a_private_redis(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        {"experiments": [experiment("emb", "emb-route", "http://127.0.0.1:9", 10)]},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port)],
        env=base_env(ABGATE_LOG_FORMAT="text"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ready.json()["redis"] == "ok" and ready.json()["config_version"] == 1
        redis_pids = [
            k
            for k in _children(proc.pid)
            if b"redis-server" in Path(f"/proc/{k}/cmdline").read_bytes()
        ]
        assert len(redis_pids) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not Path(f"/proc/{redis_pids[0]}").exists() or _is_zombie(redis_pids[0])
        assert proc.stderr is not None
        assert b"ABGATE_REDIS_URL is unset" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
