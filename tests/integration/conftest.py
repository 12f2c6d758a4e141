from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, adapter_dir, emulator, experiment, gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=True, data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("emu")
    lora = adapter_dir(tmp, "lora-a")
    with emulator(
        tmp, "--base-model", "base", "--served-model-name", "base", "slow",
        "--lora", f"lora-a={lora}", "--profile", "slow:tokens_per_second=25,ttft_ms=50",
    ) as proc:  # fmt: skip
        yield proc


def main_config(emu_url: str) -> dict[str, Any]:
    return {
        "experiments": [
            experiment("ab50", "ab50-route", emu_url, 50),
            experiment("events", "events-route", emu_url, 50),
            experiment("ten", "support-bot", emu_url, 10),
            experiment("strict", "strict-route", emu_url, 50, missing_unit_policy="reject"),
            experiment(
                "priced",
                "priced-route",
                emu_url,
                100,
                treatment={
                    "base_url": emu_url + "/v1",
                    "model": "lora-a",
                    "prompt_price_per_million": 1000.0,
                    "completion_price_per_million": 2000.0,
                },
            ),
            {
                "name": "slowexp",
                "route": "slow-route",
                "control": {"base_url": emu_url + "/v1", "model": "slow"},
                "treatment": {"base_url": emu_url + "/v1", "model": "slow"},
                "treatment_percent": 50,
            },
            {
                "name": "down",
                "route": "down-route",
                "control": {"base_url": "http://127.0.0.1:9/v1", "model": "base"},
                "treatment": {"base_url": "http://127.0.0.1:9/v1", "model": "lora-a"},
                "treatment_percent": 50,
            },
        ]
    }


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[Proc]:
    tmp: Path = tmp_path_factory.mktemp("gw")
    with gateway(tmp, main_config(emu.url), stack_redis.url, max_body_bytes="1000000") as proc:
        yield proc
