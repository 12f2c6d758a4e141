"""Feedback throughput of one gateway process, and Redis memory per 100,000 units.

1. Posts/s: N requests go through the gateway first (so their request ids are indexed), then
   concurrent clients post one `thumbs_up` per request id to `/v1/feedback` for a fixed time.
2. Memory: the event script and the feedback script are run directly on a private Redis for
   100,000 units (one request and one feedback each, unit ids like real user ids), and
   `used_memory` is read before and after; the request index alone is measured separately.

Run: ``python -m bench.feedback [--seconds 5] [--units 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import redis

from router.runtime.embedded_redis import EmbeddedRedis, free_port
from router.signals.lua import FEEDBACK, RECORD_EVENTS


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _throughput(seconds: float, concurrency: int, requests: int) -> tuple[float, int]:
    env = {**os.environ, "ABGATE_LOG_LEVEL": "WARNING"}
    with (
        tempfile.TemporaryDirectory(prefix="abgate-fb-") as tmp_s,
        EmbeddedRedis(appendonly=False) as rds,
    ):
        env["ABGATE_REDIS_URL"] = rds.url
        up, gw = free_port(), free_port()
        cfg = Path(tmp_s) / "c.json"
        target = {"base_url": f"http://127.0.0.1:{up}/v1"}
        exp = {
            "name": "fb",
            "route": "fb-route",
            "treatment_percent": 50,
            "control": {**target, "model": "base"},
            "treatment": {**target, "model": "lora"},
        }
        cfg.write_text(orjson.dumps({"experiments": [exp]}).decode())
        procs = [
            _start([sys.executable, "-m", "bench.fast_upstream", "--port", str(up)], env),
            _start(
                [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(gw)],
                env,
            ),
        ]
        try:
            return asyncio.run(_load(f"http://127.0.0.1:{gw}", seconds, concurrency, requests))
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=15)


async def _load(base: str, seconds: float, concurrency: int, requests: int) -> tuple[float, int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with s.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready")
            await asyncio.sleep(0.1)
        body = b'{"model":"fb-route","messages":[{"role":"user","content":"hi"}]}'
        ids: list[str] = []
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            headers = {"Content-Type": "application/json", "X-User-Id": f"u{i}"}
            async with sem, s.post(base + "/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                ids.append(r.headers["x-request-id"])

        await asyncio.gather(*(one(i) for i in range(requests)))
        await asyncio.sleep(1.0)
        posted = 0
        stop = time.monotonic() + seconds
        queue = iter(ids)

        async def worker() -> None:
            nonlocal posted
            for rid in queue:
                if time.monotonic() > stop:
                    return
                payload = orjson.dumps({"request_id": rid, "signal": "thumbs_up"})
                headers = {"Content-Type": "application/json"}
                async with s.post(base + "/v1/feedback", data=payload, headers=headers) as r:
                    assert r.status == 202, await r.text()
                    await r.read()
                    posted += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return posted / (time.monotonic() - t0), posted


def _memory(units: int) -> tuple[float, float]:
    """Bytes per unit (everything one request and one feedback leave), bytes per index entry."""
    with EmbeddedRedis(appendonly=False) as rds:
        client = redis.Redis.from_url(rds.url)
        record, feedback = client.register_script(RECORD_EVENTS), client.register_script(FEEDBACK)
        client.flushall()
        base = int(client.info("memory")["used_memory"])
        batch: list[bytes] = []
        for i in range(units):
            arm = "treatment" if i % 10 == 0 else "control"
            batch.append(orjson.dumps({
                "request_id": f"req_{i:032x}", "ts": 1_800_000_000.0, "experiment": "mem",
                "route": "r", "arm": arm, "unit": f"user-{i:08d}", "model": "m", "status": 200,
                "error": "", "stream": 0, "latency_ms": 120.5, "ttft_ms": -1,
                "prompt_tokens": 20, "completion_tokens": 80, "cost_usd": 1e-5, "ttl": 604800,
                "regen": 0, "fp": "",
            }))  # fmt: skip
            if len(batch) == 500:
                record(args=[1, 86400, 1_000_000, *batch])  # stream capped at ~1 entry: not counted
                batch = []
        if batch:
            record(args=[1, 86400, 1_000_000, *batch])
        pipe = client.pipeline(transaction=False)
        for i in range(units):
            arm = "treatment" if i % 10 == 0 else "control"
            feedback(args=["mem", f"req_{i:032x}", arm, f"user-{i:08d}", "thumbs_up", 1, 604800,
                           1, 86400], client=pipe)  # fmt: skip
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        total = int(client.info("memory")["used_memory"]) - base
        before_index = int(client.info("memory")["used_memory"])
        client.delete(*[f"abgate:req:req_{i:032x}" for i in range(min(units, 10000))])
        index_bytes = (before_index - int(client.info("memory")["used_memory"])) / min(units, 10000)
        client.close()
        return total / units, index_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--units", type=int, default=100_000)
    args = parser.parse_args(argv)
    rate, posted = _throughput(args.seconds, args.concurrency, 20_000)
    per_unit, per_index = _memory(args.units)
    print(f"\nfeedback posts/s, one gateway process, {args.concurrency} connections: "
          f"{rate:,.0f} ({posted} posts)")  # fmt: skip
    print(f"Redis memory per unit (request index + unit totals + feedback dedup set, "
          f"one request and one feedback each): {per_unit:,.0f} bytes")  # fmt: skip
    print(f"  per 100,000 units: {per_unit * 100_000 / 2**20:,.1f} MiB")
    print(f"  of which the request index entry: {per_index:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
