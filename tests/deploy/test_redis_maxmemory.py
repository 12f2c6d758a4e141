"""A full Redis refuses writes; the gateway's clients never notice. The shipped Redis
(tests/deploy/shipped_redis.py: its script, ACL and `maxmemory-policy noeviction`) with a small
`maxmemory`, filled until writes are refused (OOM): completions, streamed or not, still answer
200; the event writer buffers (ABGATE_EVENT_BUFFER events), then drops and counts what does not
fit; /v1/feedback, which must write to record anything, answers 503 in the OpenAI error shape;
/readyz stays 200 and says Redis is failing. Once memory is freed the buffered events are
written and nothing else was lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from router import keys
from router.runtime.embedded_redis import free_port
from tests.deploy.shipped_redis import ShippedRedis
from tests.procs import Proc, adapter_dir, emulator, experiment, gateway, metric_sum, wait_for

pytestmark = pytest.mark.integration

TOKEN = "oom-token"
BUFFER = 8  # ABGATE_EVENT_BUFFER: small, so that the buffer overflows after a few requests
WARM, FULL = 4, 40  # requests before and while Redis is full
CHUNK = "x" * (256 * 1024)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedRedis]:
    tmp = tmp_path_factory.mktemp("redis-oom")
    server = ShippedRedis(tmp, overrides={"maxmemory": "24mb"})
    server.start()
    yield server
    server.stop()


def _requests(h: redis.Redis, name: str) -> int:
    """Requests recorded in the experiment's per-arm aggregates."""
    return sum(int(h.hget(keys.arm_totals(name, arm), "requests") or 0)
               for arm in ("control", "treatment"))  # fmt: skip


def _dropped(url: str) -> float:
    return metric_sum(httpx.get(url + "/metrics").text, "abgate_events_dropped_total")


def _complete(gw: Proc, n: int, tag: str) -> list[str]:
    """`n` completions (every other one streamed), each checked; their request ids."""
    ids = []
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(n):
            stream = i % 2 == 0
            body = {"model": "oom-route", "stream": stream, "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"{tag} {i}"}]}  # fmt: skip
            resp = client.post("/v1/chat/completions", json=body,
                               headers={"X-User-Id": f"{tag}-{i}"})  # fmt: skip
            assert resp.status_code == 200, resp.text
            if stream:
                assert resp.text.rstrip().endswith("data: [DONE]"), resp.text[-200:]
            else:
                assert resp.json()["choices"][0]["message"]["content"]
            ids.append(resp.headers["x-request-id"])
    return ids


def _fill(h: redis.Redis) -> int:
    """Write until Redis refuses (OOM); the number of chunks written."""
    for i in range(10_000):
        try:
            h.set(f"filler:{i}", CHUNK)
        except redis.exceptions.OutOfMemoryError:
            return i
    raise AssertionError("Redis never refused a write: is maxmemory set?")


def test_a_full_redis_costs_events_never_a_client_error(full: ShippedRedis, tmp_path: Path) -> None:
    admin_port = free_port()
    h = full.harness()
    assert h.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"  # as shipped
    with (
        emulator(tmp_path, "--base-model", "base",
                 "--lora", f"lora-a={adapter_dir(tmp_path, 'lora-a')}") as emu,
        gateway(tmp_path, {"experiments": [experiment("oom", "oom-route", emu.url, 50)]},
                full.url(), admin_token=TOKEN, admin_port=str(admin_port),
                event_buffer=str(BUFFER)) as gw,
    ):  # fmt: skip
        admin = f"http://127.0.0.1:{admin_port}"
        warm = _complete(gw, WARM, "warm")
        wait_for("the warm-up events", lambda: _requests(h, "oom") == WARM)

        chunks = _fill(h)
        assert chunks > 0
        # a margin below what is stored, so that no freed buffer lets a write slip through
        used = int(h.info("memory")["used_memory"])
        h.config_set("maxmemory", str(used - 1024 * 1024))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            h.set("filler:probe", "x")

        _complete(gw, FULL, "full")  # every one answered 200 (checked inside)
        fb = httpx.post(gw.url + "/v1/feedback", json={"request_id": warm[0],
                                                       "signal": "thumbs_up"})  # fmt: skip
        assert fb.status_code == 503, fb.text
        error = fb.json()["error"]
        assert error["type"] == "unavailable_error" and error["message"], error
        assert error["request_id"], error
        # admin reads work, admin changes are refused the same way
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(admin + "/admin/experiments/oom", headers=auth).status_code == 200
        paused = httpx.post(admin + "/admin/experiments/oom/pause", headers=auth,
                            json={"reason": "full"})  # fmt: skip
        assert paused.status_code == 503, paused.text
        assert paused.json()["error"]["type"] == "unavailable_error"
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "unreachable", ready.text
        assert ready.json()["event_queue_depth"] == BUFFER
        wait_for("the dropped events", lambda: _dropped(admin) >= FULL - BUFFER)
        metrics = httpx.get(admin + "/metrics").text
        assert metric_sum(metrics, "abgate_events_dropped_total", reason="buffer_full") == (
            FULL - BUFFER
        )
        assert metric_sum(metrics, "abgate_redis_errors_total", component="events") > 0
        assert metric_sum(metrics, "abgate_redis_up") == 0
        outage = [x for x in gw.log.read_text().splitlines() if "Redis is unreachable" in x]
        assert len(outage) == 1 and "OutOfMemoryError" in outage[0], outage  # logged once
        assert _requests(h, "oom") == WARM  # nothing was written while full

        # room again: the buffered events go in, Redis is reported back
        h.delete(*[f"filler:{i}" for i in range(chunks)])
        h.config_set("maxmemory", "24mb")
        wait_for("the buffer to drain", lambda: httpx.get(gw.url + "/readyz").json()
              ["event_queue_depth"] == 0)  # fmt: skip
        wait_for(
            "Redis reported back", lambda: httpx.get(gw.url + "/readyz").json()["redis"] == "ok"
        )
        assert _requests(h, "oom") == WARM + BUFFER
        metrics = httpx.get(admin + "/metrics").text
        assert metric_sum(metrics, "abgate_events_dropped_total") == FULL - BUFFER
        assert metric_sum(metrics, "abgate_redis_up") == 1
        fb = httpx.post(gw.url + "/v1/feedback", json={"request_id": warm[0],
                                                       "signal": "thumbs_up"})  # fmt: skip
        assert fb.status_code == 202, fb.text
    h.close()
