"""Rollback propagation: how long after `POST .../rollback` returns does any gateway instance still
assign a request to treatment?

Three gateway processes share one Redis; a load generator keeps every gateway instance busy
with requests from users that are in treatment at 50 %. Each round creates an experiment (same
salt, so the same users are treated), waits until every gateway instance serves it, then rolls
it back through one gateway instance's admin API. The delay of a round is the send time of the
last request that any gateway instance answered with treatment, minus the time the admin call
returned (0 when none came after it). Send time precedes the gateway's assignment by the
loopback latency, so the figure is a slight underestimate of at most that latency.

Run: ``python -m bench.rollback [--rounds 20]`` (``make bench`` runs it after the gateway bench).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from router.dataplane.assignment import bucket
from router.runtime.embedded_redis import EmbeddedRedis, free_port

TOKEN = "bench-token"
SALT = "rollback-bench"


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


async def _wait_ready(session: aiohttp.ClientSession, url: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


async def _run(rounds: int, workers: int) -> list[float]:
    env = {**os.environ, "ABGATE_ADMIN_TOKEN": TOKEN, "ABGATE_LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="abgate-rb-") as tmp_s,
        EmbeddedRedis(appendonly=False) as rds,
    ):
        tmp = Path(tmp_s)
        env["ABGATE_REDIS_URL"] = rds.url
        up_port = free_port()
        procs.append(
            _start(
                [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port)],
                env,
                tmp / "upstream.log",
            )
        )
        gws = []
        for i in range(3):
            port = free_port()
            cfg = tmp / f"gw{i}.yaml"
            cfg.write_text("{}")
            procs.append(
                _start(
                    [
                        sys.executable,
                        "-m",
                        "router",
                        "serve",
                        "--config",
                        str(cfg),
                        "--port",
                        str(port),
                    ],
                    env,
                    tmp / f"gw{i}.log",
                )
            )
            gws.append(f"http://127.0.0.1:{port}")
        try:
            return await _rounds(gws, f"http://127.0.0.1:{up_port}", rounds, workers)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()


async def _rounds(gws: list[str], upstream: str, rounds: int, workers: int) -> list[float]:
    treated = [u for u in (f"user-{i}" for i in range(2000))
               if bucket(SALT.encode(), u.encode()) < 5000][:200]  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    records: list[tuple[float, str, str, str]] = []  # (sent, gateway, experiment, arm)
    stop = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        for gw in gws:
            await _wait_ready(session, gw + "/readyz")

        async def worker(gw: str, k: int) -> None:
            i = k
            body_tpl = '{"model":"rb-route","messages":[{"role":"user","content":"hi"}]}'
            while not stop.is_set():
                user = treated[i % len(treated)]
                i += 7
                sent = time.monotonic()
                try:
                    async with session.post(
                        gw + "/v1/chat/completions", data=body_tpl,
                        headers={"Content-Type": "application/json", "X-User-Id": user},
                    ) as resp:  # fmt: skip
                        await resp.read()
                        exp = resp.headers.get("x-abgate-experiment", "")
                        arm = resp.headers.get("x-abgate-arm", "")
                        records.append((sent, gw, exp, arm))
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(worker(gw, k)) for gw in gws for k in range(workers)]
        delays: list[float] = []
        try:
            for r in range(rounds):
                name = f"rb-{r}"
                exp = {
                    "name": name, "route": "rb-route", "salt": SALT, "treatment_percent": 50,
                    "control": {"base_url": upstream + "/v1", "model": "base"},
                    "treatment": {"base_url": upstream + "/v1", "model": "lora"},
                }  # fmt: skip
                admin = gws[r % 3]
                async with session.post(admin + "/admin/experiments", json=exp, headers=auth) as rp:
                    assert rp.status == 201, await rp.text()
                # every gateway instance serves the new experiment's treatment
                deadline = time.monotonic() + 5
                while True:
                    serving = {g for _, g, e, a in records[-500:] if e == name and a == "treatment"}
                    if len(serving) == len(gws):
                        break
                    assert time.monotonic() < deadline, "experiment did not propagate"
                    await asyncio.sleep(0.01)
                async with session.post(
                    admin + f"/admin/experiments/{name}/rollback",
                    json={"reason": "bench"}, headers=auth,
                ) as rp:  # fmt: skip
                    assert rp.status == 200, await rp.text()
                returned = time.monotonic()
                await asyncio.sleep(0.3)
                last = max(
                    (t for t, _, e, a in records if e == name and a == "treatment"), default=0
                )
                delays.append(max(0.0, last - returned))
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests per gateway")
    args = parser.parse_args(argv)
    delays = asyncio.run(_run(args.rounds, args.workers))
    ms = sorted(d * 1000 for d in delays)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"\nrollback propagation over {len(ms)} rollbacks, 3 gateway instances under load")
    print(f"  p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {ms[-1]:.2f} ms")
    print(f"  target p99 < 100 ms: {'met' if p99 < 100 else f'MISSED by {p99 - 100:.1f} ms'}")
    print("  per round (ms): " + json.dumps([round(x * 1000, 2) for x in delays]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
