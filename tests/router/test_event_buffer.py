"""What clients send is bounded: the event buffer in estimated bytes as well as in events (large
events cannot grow the gateway's memory while Redis is away; what does not fit is dropped and
counted), and the custom signals an experiment accepts."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from router import keys
from router.experiments import MAX_SIGNALS, Experiment
from router.metrics import GatewayMetrics
from router.signals.events import EVENT_OVERHEAD_BYTES, Event, EventWriter


def _event(n: int, unit: str) -> Event:
    return Event(
        request_id=f"req_{n:032x}", ts=time.time(), experiment="buf", route="buf-route",
        arm="control", unit=unit, model="base", status=200, error="", stream=False,
        latency_ms=1.0, ttft_ms=-1.0, prompt_tokens=1, completion_tokens=1, cost_usd=0.0,
        ttl=60,
    )  # fmt: skip


def _dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("abgate_events_dropped_total", {"reason": reason}) or 0.0


def test_the_size_estimate_counts_the_strings() -> None:
    small, big = _event(1, "u"), _event(2, "u" * 10_000)
    assert small.size() > EVENT_OVERHEAD_BYTES
    assert big.size() - small.size() == 9_999


async def test_the_buffer_holds_at_most_its_bytes_and_counts_what_it_drops(
    redis_url: str, rds: redis.Redis
) -> None:
    registry = CollectorRegistry()
    client = aioredis.from_url(redis_url)
    limit = 20_000
    writer = EventWriter(
        client, GatewayMetrics(registry), capacity=10_000, capacity_bytes=limit, batch=50,
        stream_maxlen=1000, minute_retention_seconds=60, linger_seconds=0,
    )  # fmt: skip
    try:
        # not started: nothing drains, as while Redis is away
        for n in range(5):
            writer.submit(_event(n, "x" * 100_000))  # one event larger than the whole buffer
        assert writer.depth == 0 and writer.buffered_bytes == 0
        assert _dropped(registry, "buffer_bytes") == 5

        size = _event(100, "user-1").size()
        for n in range(100, 1100):
            writer.submit(_event(n, "user-1"))
        fits = limit // size
        assert writer.depth == fits
        assert writer.buffered_bytes == fits * size <= limit
        assert _dropped(registry, "buffer_bytes") == 5 + 1000 - fits
        assert _dropped(registry, "buffer_full") == 0
        assert len(writer.pending) == fits

        writer.start()  # Redis is there: the buffer drains, and its bytes with it
        deadline = time.monotonic() + 10
        while writer.depth:
            assert time.monotonic() < deadline, "the buffer did not drain"
            await asyncio.sleep(0.01)
        assert writer.buffered_bytes == 0 and not writer.pending
        assert float(rds.hget(keys.arm_totals("buf", "control"), "requests") or 0) == fits
        writer.submit(_event(5000, "user-2"))  # room again
        assert _dropped(registry, "buffer_bytes") == 5 + 1000 - fits
    finally:
        await writer.close(1.0)
        await client.aclose()


async def test_the_count_bound_still_applies(redis_url: str) -> None:
    registry = CollectorRegistry()
    client = aioredis.from_url(redis_url)
    writer = EventWriter(
        client, GatewayMetrics(registry), capacity=3, capacity_bytes=10**9, batch=10,
        stream_maxlen=1000, minute_retention_seconds=60,
    )  # fmt: skip
    try:
        for n in range(10):
            writer.submit(_event(n, "u"))
        assert writer.depth == 3
        assert _dropped(registry, "buffer_full") == 7
        assert _dropped(registry, "buffer_bytes") == 0
    finally:
        await writer.close(0.0)
        await client.aclose()


def test_custom_signals_per_experiment_are_bounded() -> None:
    """Each custom signal is a field of the aggregates: their number and names are bounded."""
    target = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    base = {"name": "sig", "route": "r", "control": target, "treatment": target,
            "treatment_percent": 10.0}  # fmt: skip
    Experiment.model_validate({**base, "signals": [f"s{i}" for i in range(MAX_SIGNALS)]})
    with pytest.raises(ValidationError, match="at most 32 custom signals"):
        Experiment.model_validate({**base, "signals": [f"s{i}" for i in range(MAX_SIGNALS + 1)]})
    with pytest.raises(ValidationError, match="1-40"):
        Experiment.model_validate({**base, "signals": ["s" * 41]})
