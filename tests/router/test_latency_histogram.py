"""The event script keeps a histogram of request latencies per arm (`lh:<k>` fields of the arm
totals), bucketed as analysis/stats/bernoulli.py buckets them, and the read model returns it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import redis

from analysis.stats.bernoulli import bucket_high, bucket_low, histogram_quantile, latency_bucket
from analysis.types import LATENCY_BUCKET_RATIO, LATENCY_BUCKETS_MAX
from router import keys
from router.signals.lua import RECORD_EVENTS
from router.signals.readmodel import _totals

EXP = "hist"


def _event(n: int, arm: str, latency: float) -> bytes:
    return orjson.dumps({
        "request_id": f"req_{n:032x}", "ts": 1_800_000_000.0 + n, "experiment": EXP,
        "route": "r", "arm": arm, "unit": f"u{n % 7}", "model": "m", "status": 200,
        "error": "", "stream": 0, "latency_ms": latency, "ttft_ms": -1.0, "prompt_tokens": 1,
        "completion_tokens": 1, "cost_usd": 0.0, "ttl": 3600, "regen": 0, "fp": "",
    })  # fmt: skip


def test_the_script_writes_the_latency_histogram(rds: redis.Redis) -> None:
    rng = np.random.default_rng(11)
    edges = [0.0, 0.4, 1.0, LATENCY_BUCKET_RATIO, 999.999, 1000.0, 30_000.0, 1e12]
    latencies = {
        "control": [*edges, *rng.lognormal(np.log(800), 0.6, 300)],
        "treatment": list(rng.lognormal(np.log(1200), 0.6, 200)),
    }
    record = rds.register_script(RECORD_EVENTS)
    n = 0
    for arm, values in latencies.items():
        batch = []
        for v in values:
            batch.append(_event(n, arm, float(v)))
            n += 1
        for i in range(0, len(batch), 50):  # several events per script call, as the writer does
            record(args=[1000, 3600, 1000, *batch[i : i + 50]])
    for arm, values in latencies.items():
        raw = rds.hgetall(keys.arm_totals(EXP, arm))
        stored = {int(f[3:]): int(float(v)) for f, v in raw.items() if f.startswith("lh:")}
        assert stored == dict(Counter(latency_bucket(float(v)) for v in values))
        assert _totals(raw).latency_histogram == stored  # what the read model returns
        assert all(0 <= k <= LATENCY_BUCKETS_MAX for k in stored)
        for v in values:  # every latency lies in its bucket
            k = latency_bucket(float(v))
            assert bucket_low(k) <= max(float(v), 0.0) < bucket_high(k) or k == 0
    control = _totals(rds.hgetall(keys.arm_totals(EXP, "control"))).latency_histogram
    assert control[0] == 3 and control[LATENCY_BUCKETS_MAX] == 1  # below 1 ms; the cap bucket
    q = histogram_quantile(control)
    assert q is not None
    assert abs(q / float(np.quantile(latencies["control"], 0.95)) - 1) < 0.1
