"""Property: the incrementally maintained unit-level sums equal the sums recomputed from the
raw per-unit totals, and those equal an independent model of the same operations."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.runtime.embedded_redis import EmbeddedRedis
from router.signals.lua import FEEDBACK, RECORD_EVENTS

EXP = "prop"
TAG = f"abgate:{{{EXP}}}:"
UNITS = ["u1", "u2", "u3", "u4", ""]
SIGNALS = ["thumbs_up", "thumbs_down", "escalation", "resolved", "csat"]

request_op = st.tuples(
    st.just("request"),
    st.sampled_from(UNITS),
    st.sampled_from(["control", "treatment"]),
    st.floats(0.5, 5000, allow_nan=False),  # latency
    st.one_of(st.just(-1.0), st.floats(0.1, 500)),  # ttft (-1: not streamed)
    st.integers(0, 300),  # completion tokens
    st.booleans(),  # error
)
feedback_op = st.tuples(
    st.just("feedback"),
    st.integers(0, 40),  # which earlier request
    st.sampled_from(SIGNALS),
    st.floats(-10, 10, allow_nan=False),
)


@pytest.fixture(scope="module")
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The suite's own redis-server (tests/conftest.py); each example starts from FLUSHALL."""
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def _event(n: int, unit: str, arm: str, lat: float, ttft: float, tokens: int, err: bool) -> bytes:
    return orjson.dumps({
        "request_id": f"req_{n:032x}", "ts": 1_800_000_000.0 + n, "experiment": EXP,
        "route": "r", "arm": arm, "unit": unit, "model": "m", "status": 500 if err else 200,
        "error": "status_500" if err else "", "stream": int(ttft >= 0), "latency_ms": lat,
        "ttft_ms": ttft, "prompt_tokens": 7, "completion_tokens": tokens, "cost_usd": tokens * 1e-6,
        "ttl": 3600, "regen": 0, "fp": "",
    })  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(request_op, feedback_op), min_size=1, max_size=40))
def test_unit_sums_match_recomputation(client: redis.Redis, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    client.flushall()
    record = client.register_script(RECORD_EVENTS)
    feedback = client.register_script(FEEDBACK)
    model: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    requests: list[tuple[str, str]] = []
    seen: set[tuple[int, str]] = set()
    for n, op in enumerate(ops):
        if op[0] == "request":
            _, unit, arm, lat, ttft, tokens, err = op
            record(args=[1000, 3600, _event(n, unit, arm, lat, ttft, tokens, err)])
            requests.append((unit, arm))
            if unit:
                m = model[(arm, unit)]
                m["requests"] += 1
                m["errors"] += int(err)
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
            unit, arm = requests[k]
            rid = f"req_{[i for i, o in enumerate(ops) if o[0] == 'request'][k]:032x}"
            fresh = feedback(args=[EXP, rid, arm, unit, signal, value, 3600, 1, 3600])
            assert fresh == int((k, signal) not in seen)
            if (k, signal) not in seen:
                seen.add((k, signal))
                if unit:
                    m = model[(arm, unit)]
                    m[f"fb:{signal}"] += 1
                    m[f"fv:{signal}"] += value
                    if signal in ("thumbs_up", "thumbs_down"):
                        m["votes"] += 1

    moved_in = 0
    arms_of_units: list[set[str]] = []
    for arm in ("control", "treatment"):
        per_unit = {
            key.rsplit(":", 1)[1]: {f: float(v) for f, v in client.hgetall(key).items()}
            for key in client.scan_iter(f"{TAG}unit:{arm}:*")
        }
        # the per-unit totals equal the independent model
        expected = {u: dict(v) for (a, u), v in model.items() if a == arm}
        assert set(per_unit) == set(expected)
        for unit, fields in expected.items():
            for f, v in fields.items():
                assert per_unit[unit].get(f, 0.0) == pytest.approx(v, rel=1e-9, abs=1e-9), (unit, f)
        # the maintained sums equal the sums recomputed from the per-unit totals
        sums = {f: float(v) for f, v in client.hgetall(f"{TAG}units:{arm}").items()}
        assert int(sums.pop("n", 0)) == len(per_unit)
        moved_in += int(sums.pop("moved_in", 0))
        arms_of_units.append(set(per_unit))
        fields = {f for totals in per_unit.values() for f in totals}
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
        unused = set(itertools.chain(sums)) - {f"s1:{f}" for f in fields} - {
            f"s2:{f}" for f in fields} - {f"x:{a}|{b}" for a, b in pairs}  # fmt: skip
        assert not unused, unused
    # a unit seen in both arms was counted as moved once, by the arm it reached second
    assert moved_in == len(arms_of_units[0] & arms_of_units[1])
