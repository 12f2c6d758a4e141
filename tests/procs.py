"""Real processes for tests: redis-server, the emulator and the gateway, on free ports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from router.runtime.embedded_redis import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent

#: Headless Chromium as the page and report tests run it (no network, no first-run work).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1200,2600",
]  # fmt: skip


class Proc:
    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, url: str) -> None:
        self.cmd, self.env, self.log, self.url = cmd, env, log, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.cmd} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        return stop_process(proc, grace=20)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@contextmanager
def emulator(
    tmp: Path, *args: str, runtime_lora: bool = True, port: int | None = None
) -> Iterator[Proc]:
    port = port or free_port()
    env = base_env()
    if runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    cmd = [sys.executable, "-m", "router", "emulate", "--port", str(port), *args]
    p = Proc(cmd, env, tmp / f"emulator-{port}.log", f"http://127.0.0.1:{port}")
    p.start("/health")
    try:
        yield p
    finally:
        p.stop()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


@contextmanager
def gateway(tmp: Path, config: dict[str, Any], redis_url: str, **settings: str) -> Iterator[Proc]:
    port = free_port()
    cfg = write_config(tmp / f"gateway-{port}.yaml", config)
    env = base_env(
        ABGATE_REDIS_URL=redis_url, ABGATE_CONFIG_POLL_SECONDS="0.5", ABGATE_LOG_FORMAT="text"
    )
    env.update({f"ABGATE_{k.upper()}": v for k, v in settings.items()})
    cmd = [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port)]
    p = Proc(cmd, env, tmp / f"gateway-{port}.log", f"http://127.0.0.1:{port}")
    p.start("/readyz")
    try:
        yield p
    finally:
        p.stop()


def adapter_dir(tmp: Path, name: str) -> Path:
    d = tmp / "adapters" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "base", "r": 8})
    )
    return d


def experiment(
    name: str, route: str, upstream: str, percent: float, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "route": route,
        "control": {"base_url": upstream + "/v1", "model": "base"},
        "treatment": {"base_url": upstream + "/v1", "model": "lora-a"},
        "treatment_percent": percent,
        **extra,
    }


@contextmanager
def controller(tmp: Path, redis_url: str, *args: str) -> Iterator[Proc]:
    port = free_port()
    env = base_env(ABGATE_REDIS_URL=redis_url, ABGATE_LOG_FORMAT="text")
    cmd = [sys.executable, "-m", "router", "controller", "--metrics-port", str(port), *args]
    p = Proc(cmd, env, tmp / f"controller-{port}.log", f"http://127.0.0.1:{port}")
    p.start("/metrics")
    try:
        yield p
    finally:
        p.stop()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus exposition's samples of `name` whose labels include `labels`
    (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy (returned), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
