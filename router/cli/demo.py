"""`abgate demo`: the whole data plane on embedded defaults, in one command.

Starts a private Redis, the vLLM emulator with a base model and one LoRA adapter, and a gateway
with one experiment at 10 %; then a few hundred simulated users talk to the gateway through the
official `openai` client. It prints what each arm saw, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import redis
import typer

from router.embedded_redis import EmbeddedRedis, free_port

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTER = "support-lora-v2"
ROUTE = "support-bot"
EXPERIMENT = "support-v2"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        users: Annotated[int, typer.Option(min=1, help="simulated users")] = 300,
        percent: Annotated[float, typer.Option(min=0, max=100, help="treatment share, %")] = 10.0,
        seed: Annotated[int, typer.Option(help="seed of the simulated users")] = 7,
        concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 16,
    ) -> None:
        """Run the whole system locally with simulated users, print per-arm figures, exit."""
        raise typer.Exit(run(users, percent, seed, concurrency))


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {timeout}s")


async def _simulate(gateway: str, users: int, seed: int, concurrency: int) -> dict[str, set[str]]:
    import openai

    rng = random.Random(seed)
    arms_of: dict[str, set[str]] = defaultdict(set)
    sem = asyncio.Semaphore(concurrency)
    questions = [
        "My order has not arrived, what can I do?",
        "How do I reset my password?",
        "Can I change the delivery address after ordering?",
        "Why was my card charged twice?",
    ]
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="demo-key") as client:

        async def user(uid: str, n: int, stream: bool) -> None:
            for _ in range(n):
                async with sem:
                    messages = [{"role": "user", "content": rng.choice(questions)}]
                    if stream:
                        sraw = await client.chat.completions.with_raw_response.create(
                            model=ROUTE, messages=messages,  # type: ignore[arg-type]
                            stream=True, extra_headers={"X-User-Id": uid},
                        )  # fmt: skip
                        async for _chunk in sraw.parse():  # type: ignore[union-attr]
                            pass
                        arm = sraw.headers.get("x-abgate-arm", "?")
                    else:
                        raw = await client.chat.completions.with_raw_response.create(
                            model=ROUTE, messages=messages,  # type: ignore[arg-type]
                            max_tokens=48, extra_headers={"X-User-Id": uid},
                        )  # fmt: skip
                        raw.parse()
                        arm = raw.headers.get("x-abgate-arm", "?")
                    arms_of[uid].add(arm)

        await asyncio.gather(
            *(user(f"user-{i:05d}", 1 + rng.randrange(3), rng.random() < 0.3) for i in range(users))
        )
    return arms_of


def run(users: int, percent: float, seed: int, concurrency: int) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="abgate-demo-") as tmp_s,
        EmbeddedRedis(appendonly=False) as rds,
    ):
        tmp = Path(tmp_s)
        adapter = tmp / "adapters" / ADAPTER
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "base_model_name_or_path": BASE_MODEL, "r": 16})
        )
        emu_port, gw_port = free_port(), free_port()
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        config = tmp / "abgate.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "experiments": [
                        {
                            "name": EXPERIMENT,
                            "route": ROUTE,
                            "control": {
                                "base_url": f"http://127.0.0.1:{emu_port}/v1",
                                "model": BASE_MODEL,
                                "prompt_price_per_million": 0.10,
                                "completion_price_per_million": 0.40,
                            },
                            "treatment": {
                                "base_url": f"http://127.0.0.1:{emu_port}/v1",
                                "model": ADAPTER,
                                "prompt_price_per_million": 0.10,
                                "completion_price_per_million": 0.40,
                            },
                            "treatment_percent": percent,
                        }
                    ]
                },
                indent=2,
            )
        )
        emu_cmd = [
            sys.executable, "-m", "router", "emulate", "--port", str(emu_port),
            "--base-model", BASE_MODEL, "--lora", f"{ADAPTER}={adapter}",
            "--ttft-ms", "15", "--tokens-per-second", "400", "--quality", "0.70",
            "--profile", f"{ADAPTER}:ttft_ms=18,tokens_per_second=380,quality=0.78",
        ]  # fmt: skip
        gw_cmd = [
            sys.executable, "-m", "router", "serve", "--config", str(config),
            "--port", str(gw_port),
        ]  # fmt: skip
        gw_env = {**env, "ABGATE_REDIS_URL": rds.url, "ABGATE_LOG_LEVEL": "WARNING"}
        print(f"redis      {rds.url}")
        print(f"emulator   http://127.0.0.1:{emu_port}  (base {BASE_MODEL}, adapter {ADAPTER})")
        print(f"gateway    http://127.0.0.1:{gw_port}  (route {ROUTE}: {percent}% treatment)")
        with (
            _process(emu_cmd, env, tmp / "emulator.log") as emu,
            _process(gw_cmd, gw_env, tmp / "gateway.log") as gw,
        ):
            _wait_http(f"http://127.0.0.1:{emu_port}/health", emu, tmp / "emulator.log")
            _wait_http(f"http://127.0.0.1:{gw_port}/readyz", gw, tmp / "gateway.log")
            t0 = time.monotonic()
            arms_of = asyncio.run(
                _simulate(f"http://127.0.0.1:{gw_port}", users, seed, concurrency)
            )
            elapsed = time.monotonic() - t0
            time.sleep(0.5)  # let the background writer flush
            _report(rds.url, arms_of, elapsed)
            sticky = all(len(a) == 1 for a in arms_of.values())
            print(f"\nevery user stayed on one arm: {'yes' if sticky else 'NO'}")
            return 0 if sticky else 1


def _report(url: str, arms_of: dict[str, set[str]], elapsed: float) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        users: dict[str, int] = defaultdict(int)
        for arms in arms_of.values():
            for arm in arms:
                users[arm] += 1
        total_users = sum(users.values()) or 1
        print(f"\n{len(arms_of)} users, finished in {elapsed:.1f}s\n")
        head = ("arm", "users", "user share", "requests", "errors", "mean latency",
                "mean TTFT", "tokens/request", "cost")  # fmt: skip
        rows = [head]
        for arm in ("control", "treatment"):
            agg = client.hgetall(f"abgate:{{{EXPERIMENT}}}:arm:{arm}")
            n = int(agg.get("requests", 0))
            ttft_n = int(agg.get("ttft_count", 0))
            rows.append(
                (
                    arm,
                    str(users[arm]),
                    f"{100 * users[arm] / total_users:.1f}%",
                    str(n),
                    str(agg.get("errors", "0")),
                    f"{float(agg.get('latency_ms_sum', 0)) / n:.1f} ms" if n else "-",
                    f"{float(agg.get('ttft_ms_sum', 0)) / ttft_n:.1f} ms" if ttft_n else "-",
                    f"{int(agg.get('completion_tokens', 0)) / n:.1f}" if n else "-",
                    f"${float(agg.get('cost_usd', 0)):.6f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for i, row in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
            if i == 0:
                print("  ".join("-" * w for w in widths))
    finally:
        client.close()
