"""Operator CLI cold start: how long `abgate --help` and a real `abgate rollback` take.

In an incident the one-command rollback must be instant, so the figure that matters is the
wall time of a whole new process: interpreter start, imports, the admin call and exit. The bench
starts a private redis-server and one gateway (`python -m router serve`) on a free port with an
admin token, creates one running experiment per round through the admin API, and times, each
round, a fresh `python -m router --help` and a fresh `python -m router rollback NAME` (exit 0
checked). It also counts the modules the rollback process imports and names the heavy ones
(scipy, FastAPI, uvicorn, openai, the report stack) if any is among them.

Run: ``python -m bench.cli [--rounds 10]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from router.runtime.embedded_redis import EmbeddedRedis, free_port, stop_process

TOKEN = "bench-cli-token"
TARGET_SECONDS = 0.5
HEAVY = ("scipy", "fastapi", "uvicorn", "openai", "analysis.report", "numpy", "redis")


def _admin(url: str, method: str, path: str, body: object | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/readyz", timeout=1) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {limit}s")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} exited {out.returncode}: {out.stderr[-500:]}")
    return elapsed


def _imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """Modules a run of ``argv`` imports, from ``-X importtime`` (printed on stderr)."""
    out = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    names = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.append(line.rsplit("|", 1)[1].strip())
    return names


def _describe(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"  {label:<22} first {seconds[0] * 1000:7.0f} ms   median {statistics.median(ms):7.0f} ms"
        f"   max {ms[-1]:7.0f} ms"
    )


def run(rounds: int) -> tuple[list[float], list[float], list[str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ABGATE_")},
        "ABGATE_ADMIN_TOKEN": TOKEN,
        "ABGATE_LOG_LEVEL": "WARNING",
    }
    with (
        tempfile.TemporaryDirectory(prefix="abgate-cli-bench-") as tmp_s,
        EmbeddedRedis(appendonly=False) as rds,
    ):
        tmp = Path(tmp_s)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = tmp / "abgate.yaml"
        config.write_text("{}")
        log = tmp / "gateway.log"
        cmd = [sys.executable, "-m", "router", "serve", "--config", str(config),
               "--port", str(port)]  # fmt: skip
        with log.open("wb") as out:
            gw = subprocess.Popen(
                cmd, env={**env, "ABGATE_REDIS_URL": rds.url}, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            _wait_ready(url, gw, log)
            cli = [sys.executable, "-m", "router"]
            upstream = f"http://127.0.0.1:{free_port()}/v1"  # never called: rollback only
            helps: list[float] = []
            rollbacks: list[float] = []
            for r in range(rounds + 1):
                name = f"cli-bench-{r}"
                exp = {
                    "name": name, "route": f"cli-bench-route-{r}", "treatment_percent": 50,
                    "control": {"base_url": upstream, "model": "base"},
                    "treatment": {"base_url": upstream, "model": "lora"},
                }  # fmt: skip
                status = _admin(url, "POST", "/admin/experiments", exp)
                if status != 201:
                    raise RuntimeError(f"creating {name} answered {status}")
                rollback = [*cli, "rollback", name, "--url", url, "--reason", "bench"]
                if r == rounds:  # one more, to list what a rollback imports
                    return helps, rollbacks, _imported(rollback, env)
                helps.append(_timed([*cli, "--help"], env))
                rollbacks.append(_timed(rollback, env))
        finally:
            stop_process(gw)
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    helps, rollbacks, modules = run(max(1, args.rounds))
    heavy = sorted({m for m in modules for h in HEAVY if m == h or m.startswith(h + ".")})
    roots = sorted({m.split(".")[0] for m in heavy})
    median = statistics.median(rollbacks)
    print(f"\noperator CLI cold start over {len(rollbacks)} runs (a new process each)")
    print(_describe("abgate --help", helps))
    print(_describe("abgate rollback NAME", rollbacks))
    print(f"  modules imported by a rollback: {len(modules)}; heavy: {', '.join(roots) or 'none'}")
    verdict = "met" if median < TARGET_SECONDS else f"MISSED by {median - TARGET_SECONDS:.2f} s"
    print(f"  target median rollback < {TARGET_SECONDS} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
