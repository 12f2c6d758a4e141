"""Property: the incrementally maintained unit-level sums equal the sums recomputed from the
raw per-unit totals, and those equal an independent model of the same operations: requests
(succeeded, failed, or left by their client), feedback, and the end of the experiment, after
which events still on their way and late feedback are recorded but no unit is counted anew.
An arm stores at most `CAP` units: a further unit's requests count in the arm's totals and
their `units_over_cap` only, and feedback never adds a unit."""

from __future__ import annotations

import asyncio
import itertools
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

from router import keys
from router.control.retention import Retention, queue_lifetimes
from router.experiments import Experiment
from router.metrics import GatewayMetrics
from router.runtime.embedded_redis import EmbeddedRedis
from router.signals.events import Event, EventWriter
from router.signals.lua import FEEDBACK, RECORD_EVENTS
from router.signals.readmodel import _totals, decode_unit_totals

EXP = "prop"
UNITS = ["u1", "u2", "u3", "u4", ""]
SIGNALS = ["thumbs_up", "thumbs_down", "escalation", "resolved", "csat"]
OUTCOMES = ["", "status_500", "stream_timeout", "client_closed"]
#: status sent, and the status class counted (a stream that broke after its 200 is a 5xx)
STATUS = {"": (200, "2xx"), "status_500": (500, "5xx"), "stream_timeout": (200, "5xx"),
          "client_closed": (499, "4xx")}  # fmt: skip
RETENTION = Retention(ended_seconds=3000, feedback_window_seconds=3600)
CAP = 3  # units per arm at most (ABGATE_MAX_UNITS_PER_ARM): fewer than UNITS has

request_op = st.tuples(
    st.just("request"),
    st.sampled_from(UNITS),
    st.sampled_from(["control", "treatment"]),
    st.floats(0.5, 5000, allow_nan=False),  # latency
    st.one_of(st.just(-1.0), st.floats(0.1, 500)),  # ttft (-1: not streamed)
    st.integers(0, 300),  # completion tokens
    st.sampled_from(OUTCOMES),
)
feedback_op = st.tuples(
    st.just("feedback"),
    st.integers(0, 40),  # which earlier request
    st.sampled_from(SIGNALS),
    st.floats(-10, 10, allow_nan=False),
)
end_op = st.tuples(st.just("end"))


@pytest.fixture(scope="module")
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The suite's own redis-server (tests/conftest.py); each example starts from FLUSHALL."""
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def _event(n: int, unit: str, arm: str, lat: float, ttft: float, tokens: int, err: str) -> bytes:
    status = STATUS[err][0]
    return orjson.dumps(
        {
            "request_id": f"req_{n:032x}",
            "ts": 1_800_000_000.0 + n,
            "experiment": EXP,
            "route": "r",
            "arm": arm,
            "unit": unit,
            "model": "m",
            "status": status,
            "error": err,
            "stream": int(ttft >= 0),
            "latency_ms": lat,
            "ttft_ms": ttft,
            "prompt_tokens": 7,
            "completion_tokens": tokens,
            "cost_usd": tokens * 1e-6,
            "ttl": 3600,
            "regen": 0,
            "fp": "",
        }
    )


def _end(client: redis.Redis) -> None:
    """The experiment is rolled back: the commands the config store's transaction runs."""
    target = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    running = Experiment.model_validate(
        {
            "name": EXP,
            "route": "r",
            "control": target,
            "treatment": target,
            "treatment_percent": 50.0,
        }
    )
    ended = running.model_copy(update={"state": "rolled_back"})
    pipe = client.pipeline(transaction=True)
    queue_lifetimes(pipe, {EXP: running}, {EXP: ended}, RETENTION)
    pipe.execute()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(request_op, feedback_op, end_op), min_size=1, max_size=40))
def test_unit_sums_match_recomputation(client: redis.Redis, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    client.flushall()
    record = client.register_script(RECORD_EVENTS)
    feedback = client.register_script(FEEDBACK)
    model: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    requests: list[tuple[str, str, int]] = []  # (unit, arm, op position)
    seen: set[tuple[int, str]] = set()
    ended = False
    for n, op in enumerate(ops):
        if op[0] == "end":
            if not ended:
                _end(client)
            ended = True
        elif op[0] == "request":
            _, unit, arm, lat, ttft, tokens, err = op
            record(args=[1000, 3600, CAP, _event(n, unit, arm, lat, ttft, tokens, err)])
            requests.append((unit, arm, n))
            t = totals[arm]
            t["requests"] += 1
            t["errors"] += int(err not in ("", "client_closed"))
            t["client_closed"] += int(err == "client_closed")
            t[f"status_{STATUS[err][1]}"] += 1
            # after the end, a unit the arm never saw is not counted (its totals would start
            # from zero): the unit-level sums stay those of the experiment's own units; nor is
            # one new to an arm that holds CAP units (counted in `units_over_cap`)
            new = bool(unit) and (arm, unit) not in model
            full = sum(a == arm for a, _ in model) >= CAP
            if new and not ended and full:
                t["units_over_cap"] += 1
            if unit and not (new and (ended or full)):
                m = model[(arm, unit)]
                m["requests"] += 1
                m["errors"] += int(err not in ("", "client_closed"))
                m["client_closed"] += int(err == "client_closed")
                m["latency_ms"] += lat
                m["prompt_tokens"] += 7
                m["completion_tokens"] += tokens
                m["cost_usd"] += tokens * 1e-6
                if ttft >= 0:
                    m["ttft_ms"] += ttft
                    m["ttft_n"] += 1
        elif requests:
            _, which, signal, value = op
            k = which % len(requests)
            unit, arm, pos = requests[k]
            fresh = feedback(args=[EXP, f"req_{pos:032x}", arm, unit, signal, value, 3600, 1, 3600])
            assert fresh == int((k, signal) not in seen)
            if (k, signal) not in seen:
                seen.add((k, signal))
                totals[arm][f"fb:{signal}"] += 1
                if unit and (arm, unit) in model:
                    m = model[(arm, unit)]
                    m[f"fb:{signal}"] += 1
                    m[f"fv:{signal}"] += value
                    if signal in ("thumbs_up", "thumbs_down"):
                        m["votes"] += 1

    moved_in = 0
    arms_of_units: list[set[str]] = []
    for arm in ("control", "treatment"):
        # the per-arm totals count every request, errors and client closes apart
        agg = {f: float(v) for f, v in client.hgetall(keys.arm_totals(EXP, arm)).items()}
        for f, v in totals[arm].items():
            assert agg.get(f, 0.0) == v, (arm, f)
        per_unit = {
            unit: decode_unit_totals(raw)
            for unit, raw in client.hgetall(keys.unit_totals(EXP, arm)).items()
        }
        # the per-unit totals equal the independent model
        expected = {u: dict(v) for (a, u), v in model.items() if a == arm}
        assert set(per_unit) == set(expected)
        for unit, fields in expected.items():
            for f, v in fields.items():
                assert per_unit[unit].get(f, 0.0) == pytest.approx(v, rel=1e-9, abs=1e-9), (unit, f)
        # the maintained sums equal the sums recomputed from the per-unit totals
        sums = {f: float(v) for f, v in client.hgetall(keys.unit_sums(EXP, arm)).items()}
        assert int(sums.pop("n", 0)) == len(per_unit) <= CAP
        moved_in += int(sums.pop("moved_in", 0))
        arms_of_units.append(set(per_unit))
        fields = {f for t in per_unit.values() for f in t}
        for f in fields:
            s1 = sum(t.get(f, 0.0) for t in per_unit.values())
            s2 = sum(t.get(f, 0.0) ** 2 for t in per_unit.values())
            assert sums.get(f"s1:{f}", 0.0) == pytest.approx(s1, rel=1e-9, abs=1e-6)
            assert sums.get(f"s2:{f}", 0.0) == pytest.approx(s2, rel=1e-9, abs=1e-6)
        pairs = [(f, "requests") for f in fields if f != "requests"]
        pairs += [("ttft_ms", "ttft_n"), ("fb:thumbs_up", "votes"), ("fb:thumbs_down", "votes")]
        for num, den in pairs:
            x = sum(t.get(num, 0.0) * t.get(den, 0.0) for t in per_unit.values())
            assert sums.get(f"x:{num}|{den}", 0.0) == pytest.approx(x, rel=1e-9, abs=1e-6)
        # units with a non-zero denominator (the evidence the policy needs per arm)
        dens = ("requests", "votes", "ttft_n")
        for den in dens:
            nz = sum(1 for t in per_unit.values() if t.get(den, 0.0) != 0)
            assert int(sums.get(f"nz:{den}", 0)) == nz, (arm, den)
        unused = (
            set(itertools.chain(sums))
            - {f"s1:{f}" for f in fields}
            - {f"s2:{f}" for f in fields}
            - {f"x:{a}|{b}" for a, b in pairs}
            - {f"nz:{den}" for den in dens}
        )
        assert not unused, unused
        # after the end the per-unit totals expire after the retention; before, never
        ttl = client.ttl(keys.unit_totals(EXP, arm))
        if per_unit:
            assert (0 < ttl <= 3600) if ended else ttl == -1
    # a unit seen in both arms was counted as moved once, by the arm it reached second
    assert moved_in == len(arms_of_units[0] & arms_of_units[1])
    if any(op[0] == "request" for op in ops):
        ttl = client.ttl(keys.events(EXP))
        assert (0 < ttl <= 3600) if ended else ttl == -1


def test_totals_survive_the_encoding_exactly(client: redis.Redis) -> None:
    """Stored totals read back as the same doubles, however many digits they need."""
    client.flushall()
    record = client.register_script(RECORD_EVENTS)
    values = [0.1, 1 / 3, 123.456, 2.5e-7, 98765.4321, 1e15 + 0.5, 7.0]
    for n, v in enumerate(values):
        record(args=[1000, 3600, 100, _event(n, "u", "control", v, -1, 0, "")])
    stored = decode_unit_totals(client.hget(keys.unit_totals(EXP, "control"), "u") or "")
    expected = 0.0
    for v in values:
        expected += v
    assert stored["latency_ms"] == expected  # the same additions, in the same order
    assert stored["requests"] == len(values)


def _arm(client: redis.Redis, key: str) -> dict[str, float]:
    return {str(f): float(v) for f, v in client.hgetall(key).items()}


def test_an_arm_stores_at_most_its_units(client: redis.Redis) -> None:
    """Unit ids a client invents cannot grow Redis: the 4th distinct unit of an arm with a cap
    of 3 is not stored, its requests count in the arm's totals and `units_over_cap`, feedback for
    it adds nothing, and the stored units keep being updated exactly."""
    client.flushall()
    record = client.register_script(RECORD_EVENTS)
    feedback = client.register_script(FEEDBACK)
    ukey, skey = keys.unit_totals(EXP, "control"), keys.unit_sums(EXP, "control")
    akey = keys.arm_totals(EXP, "control")

    def request(n: int, unit: str, lat: float = 10.0) -> None:
        assert record(args=[1000, 3600, 3, _event(n, unit, "control", lat, -1, 5, "")]) == 1

    # one batch with five new units: the cap holds within a batch too
    batch = [_event(n, u, "control", 10.0, -1, 5, "") for n, u in enumerate("abcde")]
    assert record(args=[1000, 3600, 3, *batch]) == 5
    assert set(client.hkeys(ukey)) == {"a", "b", "c"}
    assert _arm(client, akey)["requests"] == 5
    assert _arm(client, akey)["units_over_cap"] == 2
    assert _arm(client, skey)["n"] == 3

    request(10, "d", lat=40.0)  # a 4th unit, again: not stored, counted
    request(11, "", lat=1.0)  # no unit id: neither stored nor over the cap
    request(12, "a", lat=30.0)  # a stored unit keeps updating
    assert set(client.hkeys(ukey)) == {"a", "b", "c"}
    arm = _arm(client, akey)
    assert arm["requests"] == 8 and arm["units_over_cap"] == 3
    assert arm["latency_ms_sum"] == 5 * 10.0 + 40.0 + 1.0 + 30.0
    assert decode_unit_totals(client.hget(ukey, "a") or "")["requests"] == 2
    assert _totals(client.hgetall(akey)).units_over_cap == 3  # what reports read

    # feedback for the unit over the cap counts in the arm's totals, and creates no unit
    assert feedback(args=[EXP, f"req_{10:032x}", "control", "d", "thumbs_up", 1, 3600, 1, 60])
    assert feedback(args=[EXP, f"req_{3:032x}", "control", "d", "csat", 4, 3600, 1, 60])
    assert not client.hexists(ukey, "d")
    # ... and feedback for a stored unit still updates it
    assert feedback(args=[EXP, f"req_{12:032x}", "control", "a", "thumbs_up", 1, 3600, 1, 60])
    arm = _arm(client, akey)
    assert arm["feedback"] == 3 and arm["fb:thumbs_up"] == 2 and arm["fv:csat"] == 4
    assert arm["units_over_cap"] == 3  # requests only
    a = decode_unit_totals(client.hget(ukey, "a") or "")
    assert a["fb:thumbs_up"] == 1 and a["votes"] == 1 and a["latency_ms"] == 40.0

    # the sums over units are those of the three stored units, exactly
    per_unit = [decode_unit_totals(raw) for raw in client.hvals(ukey)]
    sums = _arm(client, skey)
    assert sums["n"] == 3
    for f in ("requests", "latency_ms", "fb:thumbs_up", "votes", "completion_tokens"):
        assert sums.get(f"s1:{f}", 0.0) == sum(t.get(f, 0.0) for t in per_unit), f
        assert sums.get(f"s2:{f}", 0.0) == sum(t.get(f, 0.0) ** 2 for t in per_unit), f
    assert "s1:fb:csat" not in sums
    # the other arm has its own cap
    record(args=[1000, 3600, 3, _event(20, "d", "treatment", 5.0, -1, 1, "")])
    assert client.hkeys(keys.unit_totals(EXP, "treatment")) == ["d"]
    assert "units_over_cap" not in _arm(client, keys.arm_totals(EXP, "treatment"))


async def test_the_event_writer_passes_its_cap(redis_url: str, rds: redis.Redis) -> None:
    """EventWriter(max_units_per_arm=...) (the gateway's ABGATE_MAX_UNITS_PER_ARM) reaches the
    script."""
    client = aioredis.from_url(redis_url)
    writer = EventWriter(
        client, GatewayMetrics(CollectorRegistry()), capacity=100, batch=2, stream_maxlen=1000,
        minute_retention_seconds=60, max_units_per_arm=2, linger_seconds=0,
    )  # fmt: skip
    writer.start()
    try:
        for n, unit in enumerate(["u1", "u2", "u3", "u1", "u4"]):
            event = Event(
                request_id=f"req_{n:032x}", ts=time.time(), experiment="capw", route="r",
                arm="control", unit=unit, model="m", status=200, error="", stream=False,
                latency_ms=1.0, ttft_ms=-1.0, prompt_tokens=1, completion_tokens=1,
                cost_usd=0.0, ttl=60,
            )  # fmt: skip
            writer.submit(event)
        deadline = time.monotonic() + 10
        while writer.depth:
            assert time.monotonic() < deadline, "the buffer did not drain"
            await asyncio.sleep(0.01)
    finally:
        await writer.close(1.0)
        await client.aclose()
    assert set(rds.hkeys(keys.unit_totals("capw", "control"))) == {"u1", "u2"}
    totals = rds.hgetall(keys.arm_totals("capw", "control"))
    assert float(totals["requests"]) == 5 and float(totals["units_over_cap"]) == 2
