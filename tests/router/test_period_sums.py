"""Property: the per-period sums over units (router/signals/lua.py, `keys.period_sums`) equal
those recomputed by an independent model of the same operations: requests stamped with the
experiment's period (or, still on their way, with the one before), feedback, and period changes.
A unit counts in the period of its first event there; a later period's event starts its totals
of that period afresh; an older period's event counts in the cumulative sums only; feedback
counts in the unit's current period. The cumulative sums stay those of all its totals."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from analysis.stats.bernoulli import latency_bucket
from router import keys
from router.experiments import Experiment
from router.metrics import GatewayMetrics
from router.runtime.embedded_redis import EmbeddedRedis
from router.signals.events import Event, EventWriter
from router.signals.lua import FEEDBACK, RECORD_EVENTS
from router.signals.readmodel import (
    _periods,
    decode_period_totals,
    decode_unit_totals,
    read_snapshot,
)
from tests.router.test_unit_sums import EXP, _event

UNITS = ["u1", "u2", "u3", "u4", ""]
ARMS = ["control", "treatment"]
SIGNALS = ["thumbs_up", "thumbs_down", "resolved"]

request_op = st.tuples(
    st.just("request"),
    st.sampled_from(UNITS),
    st.sampled_from(ARMS),
    st.floats(0.5, 5000, allow_nan=False),  # latency
    st.integers(0, 300),  # completion tokens
    st.sampled_from([0, 0, 0, 1]),  # 1: stamped with the previous period (late)
)
feedback_op = st.tuples(st.just("feedback"), st.integers(0, 40), st.sampled_from(SIGNALS))
period_op = st.tuples(st.just("period"))
PAIRS_EXTRA = [("ttft_ms", "ttft_n"), ("fb:thumbs_up", "votes"), ("fb:thumbs_down", "votes")]


@pytest.fixture(scope="module")
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def _stamped(n: int, unit: str, arm: str, lat: float, tokens: int, period: int) -> bytes:
    e = orjson.loads(_event(n, unit, arm, lat, -1.0, tokens, ""))
    e["period"] = period
    return orjson.dumps(e)


def _expected(units: dict[str, dict[str, float]]) -> dict[str, float]:
    """The sums over `units` (unit -> totals) as the hash stores them."""
    out: dict[str, float] = {"n": float(len(units))}
    fields = {f for t in units.values() for f in t}
    for f in fields:
        out[f"s1:{f}"] = sum(t.get(f, 0.0) for t in units.values())
        out[f"s2:{f}"] = sum(t.get(f, 0.0) ** 2 for t in units.values())
    pairs = [(f, "requests") for f in fields if f != "requests"] + PAIRS_EXTRA
    for num, den in pairs:
        out[f"x:{num}|{den}"] = sum(t.get(num, 0.0) * t.get(den, 0.0) for t in units.values())
    for den in ("requests", "votes", "ttft_n"):
        out[f"nz:{den}"] = float(sum(1 for t in units.values() if t.get(den, 0.0) != 0))
    return out


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(request_op, feedback_op, period_op), min_size=1, max_size=40))
def test_period_sums_match_recomputation(client: redis.Redis, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    client.flushall()
    record = client.register_script(RECORD_EVENTS)
    feedback = client.register_script(FEEDBACK)
    period = 0
    current: dict[tuple[str, str], int] = {}  # (arm, unit) -> the unit's current period
    cumulative: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    per_period: dict[tuple[str, int], dict[str, dict[str, float]]] = defaultdict(dict)
    requests: list[tuple[str, str, int]] = []
    seen: set[tuple[int, str]] = set()
    # every event's latency in the histogram of the period it was routed under (with or
    # without a unit id, late or not)
    latency: dict[tuple[str, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))

    def add(arm: str, unit: str, p: int | None, deltas: dict[str, float]) -> None:
        for f, d in deltas.items():
            if d != 0:
                cumulative[(arm, unit)][f] += d
        if p is None:
            return
        if (arm, unit) not in current or p > current[(arm, unit)]:
            current[(arm, unit)] = p
            per_period[(arm, p)][unit] = {}
        if p == current[(arm, unit)]:
            t = per_period[(arm, p)][unit]
            for f, d in deltas.items():
                if d != 0:
                    t[f] = t.get(f, 0.0) + d

    for n, op in enumerate(ops):
        if op[0] == "period":
            period += 1
        elif op[0] == "request":
            _, unit, arm, lat, tokens, late = op
            stamp = max(0, period - late)
            assert record(args=[1000, 3600, 100, _stamped(n, unit, arm, lat, tokens, stamp)])
            requests.append((unit, arm, n))
            latency[(arm, stamp)][latency_bucket(lat)] += 1
            if unit:
                add(
                    arm,
                    unit,
                    stamp,
                    {
                        "requests": 1,
                        "latency_ms": lat,
                        "prompt_tokens": 7,
                        "completion_tokens": tokens,
                        "cost_usd": tokens * 1e-6,
                    },
                )
        elif requests:
            _, which, signal = op
            k = which % len(requests)
            unit, arm, pos = requests[k]
            fresh = feedback(args=[EXP, f"req_{pos:032x}", arm, unit, signal, 1, 3600, 1, 3600])
            assert fresh == int((k, signal) not in seen)
            if fresh and unit:
                seen.add((k, signal))
                deltas = {f"fb:{signal}": 1.0, f"fv:{signal}": 1.0}
                if signal in ("thumbs_up", "thumbs_down"):
                    deltas["votes"] = 1.0
                add(arm, unit, current.get((arm, unit)), deltas)
            seen.add((k, signal))

    raw = {arm: client.hgetall(keys.period_sums(EXP, arm)) for arm in ARMS}
    for arm in ARMS:
        got: dict[int, dict[str, float]] = defaultdict(dict)
        hist: dict[int, dict[int, int]] = defaultdict(dict)
        for field, value in raw[arm].items():
            p, _, name = field.partition(":")
            if name.startswith("lh:"):
                hist[int(p)][int(name[3:])] = int(float(value))
            else:
                got[int(p)][name] = float(value)
        assert hist == {p: dict(h) for (a, p), h in latency.items() if a == arm}
        periods = {p for (a, p) in per_period if a == arm}
        assert set(got) == periods
        for p in periods:
            want = _expected(per_period[(arm, p)])
            assert set(got[p]) <= set(want), (arm, p, set(got[p]) - set(want))
            for name, value in want.items():
                assert got[p].get(name, 0.0) == pytest.approx(value, rel=1e-9, abs=1e-6), (
                    arm, p, name)  # fmt: skip
        # each unit's stored totals: the cumulative ones and those of its current period
        for unit, stored in client.hgetall(keys.unit_totals(EXP, arm)).items():
            totals = decode_unit_totals(stored)
            for f, v in cumulative[(arm, unit)].items():
                assert totals.get(f, 0.0) == pytest.approx(v, rel=1e-9, abs=1e-9)
            p, ptotals = decode_period_totals(stored)
            assert p == current[(arm, unit)]
            assert ptotals == pytest.approx(per_period[(arm, p)][unit], rel=1e-9, abs=1e-9)
    # the read model sees every period of both arms
    read = _periods(raw["control"], raw["treatment"])
    assert [s.period for s in read] == sorted({p for _, p in per_period})
    for s in read:
        for arm, sums in (("control", s.control), ("treatment", s.treatment)):
            assert sums.units == len(per_period.get((arm, s.period), {}))


async def test_events_carry_their_period_into_the_snapshot(redis_url: str) -> None:
    """Events written by the event writer with the period they were routed under come back
    from the read model as that period's sums, next to the cumulative ones."""
    client = aioredis.from_url(redis_url)
    writer = EventWriter(
        client, GatewayMetrics(CollectorRegistry()), capacity=100, batch=3, stream_maxlen=1000,
        minute_retention_seconds=60, linger_seconds=0,
    )  # fmt: skip
    target = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    exp = Experiment.model_validate({
        "name": "stamped", "route": "r", "control": target, "treatment": target,
        "treatment_percent": 10.0, "period": 1,
    })  # fmt: skip
    writer.start()
    try:
        # (unit, arm, period): u1 in both periods, u2 only in the first, u3 only in the second
        for n, (unit, arm, period) in enumerate([("u1", "control", 0), ("u2", "control", 0),
                                                  ("u1", "control", 1), ("u3", "treatment", 1),
                                                  ("u1", "control", 1)]):  # fmt: skip
            writer.submit(Event(
                request_id=f"req_{n:032x}", ts=time.time(), experiment="stamped", route="r",
                arm=arm, unit=unit, model="m", status=200, error="", stream=False,
                latency_ms=10.0 * (n + 1), ttft_ms=-1.0, prompt_tokens=1, completion_tokens=1,
                cost_usd=0.0, ttl=60, period=period,
            ))  # fmt: skip
        deadline = time.monotonic() + 10
        while writer.depth:
            assert time.monotonic() < deadline, "the buffer did not drain"
            await asyncio.sleep(0.01)
        snap = await read_snapshot(client, exp)
    finally:
        await writer.close(1.0)
        await client.aclose()
    assert snap.period == 1
    assert snap.control.units.units == 2 and snap.control.units.total("requests") == 4
    assert [p.period for p in snap.periods] == [0, 1]
    first, second = snap.periods
    assert (first.control.units, first.control.total("requests")) == (2, 2)
    assert first.control.total("latency_ms") == 10.0 + 20.0
    assert (second.control.units, second.control.total("requests")) == (1, 2)
    assert second.control.sq("requests") == 4.0  # u1's two requests of period 1
    assert (second.treatment.units, first.treatment.units) == (1, 0)
