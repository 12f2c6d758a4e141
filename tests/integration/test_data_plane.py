"""Bad input, events in Redis, metrics, policies, upstream failures, live config changes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from router.control.store import AuditEntry, ConfigStore
from router.experiments import Experiment
from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, emulator, experiment, gateway

pytestmark = pytest.mark.integration

CHAT = {"model": "events-route", "messages": [{"role": "user", "content": "hi"}]}


def _post(gw: Proc, body: object = CHAT, **kw: object) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30, **kw)  # type: ignore[arg-type]


def _index_count(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter("abgate:req:*", count=1000))


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def r(stack_redis: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(stack_redis.url, decode_responses=True)


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b'{"model": "events-route", "messages": [', {}, 400, "not valid JSON"),
        (b'["model"]', {}, 400, "JSON object"),
        (b'{"messages": []}', {}, 400, "model"),
        (b'{"model": 7}', {}, 400, "model"),
        (b'{"model": "no-such-alias", "messages": []}', {}, 404, "no-such-alias"),
        (b'{"model": "events-route"}', {"content-type": "text/plain"}, 415, "Content-Type"),
        (b'{"model": "events-route"}', {"content-type": ""}, 415, "Content-Type"),
        (b'{"model": "events-route", "x": "' + b"a" * 1_000_001 + b'"}', {}, 413, "exceeds"),
        (b'{"model": "strict-route", "messages": []}', {}, 400, "x-user-id"),
    ],
)
def test_bad_input_is_refused_clearly_and_not_recorded(
    gw: Proc, r: redis.Redis, content: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    time.sleep(0.2)
    before = _index_count(r)
    hdrs = {"content-type": "application/json", **headers}
    if hdrs["content-type"] == "":
        del hdrs["content-type"]
    resp = httpx.post(gw.url + "/v1/chat/completions", content=content, headers=hdrs, timeout=30)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert needle in err["message"]
    assert err["request_id"] == resp.headers["x-request-id"]
    assert {"message", "type", "param", "code"} <= set(err)
    time.sleep(0.3)
    assert _index_count(r) == before


def test_one_event_per_request_and_aggregates_equal_event_sums(gw: Proc, r: redis.Redis) -> None:
    ids: set[str] = set()
    for i in range(40):
        body = {**CHAT, "stream": i % 3 == 0, "max_tokens": 5 + i % 7}
        resp = _post(gw, body, headers={"X-User-Id": f"ev-user-{i % 13}"})
        assert resp.status_code == 200
        ids.add(resp.headers["x-request-id"])
    _wait_for(lambda: r.xlen("abgate:{events}:events") >= 40)
    time.sleep(0.3)
    events = [fields for _, fields in r.xrange("abgate:{events}:events")]
    assert len(events) == 40
    assert {e["request_id"] for e in events} == ids
    for e in events:
        index = r.get(f"abgate:req:{e['request_id']}")
        assert index == f"{e['arm'][0]}|events|{e['unit']}"
        assert 0 < r.ttl(f"abgate:req:{e['request_id']}") <= 7 * 86400
    for arm in ("control", "treatment"):
        mine = [e for e in events if e["arm"] == arm]
        agg = r.hgetall(f"abgate:{{events}}:arm:{arm}")
        assert mine, f"no {arm} traffic"
        assert int(agg["requests"]) == len(mine)
        assert int(agg.get("errors", 0)) == 0
        assert int(agg["completion_tokens"]) == sum(int(e["completion_tokens"]) for e in mine)
        assert int(agg["prompt_tokens"]) == sum(int(e["prompt_tokens"]) for e in mine)
        assert float(agg["latency_ms_sum"]) == pytest.approx(
            sum(float(e["latency_ms"]) for e in mine), rel=1e-9
        )
        streamed = [e for e in mine if e["stream"] == "1"]
        assert int(agg.get("ttft_count", 0)) == len(streamed)
        assert all(int(e["completion_tokens"]) > 0 for e in mine)
    minute = sum(int(r.hget(k, "requests") or 0) for k in r.scan_iter("abgate:{events}:minute:*"))
    assert minute == 40


def test_cost_from_target_prices(gw: Proc, r: redis.Redis) -> None:
    resp = _post(gw, {**CHAT, "model": "priced-route"}, headers={"X-User-Id": "payer"})
    usage = resp.json()["usage"]
    expected = (usage["prompt_tokens"] * 1000.0 + usage["completion_tokens"] * 2000.0) / 1e6
    _wait_for(lambda: r.exists("abgate:{priced}:arm:treatment") == 1)
    assert float(r.hget("abgate:{priced}:arm:treatment", "cost_usd")) == pytest.approx(expected)


def test_upstream_down_is_502_in_openai_shape_and_counted(gw: Proc, r: redis.Redis) -> None:
    resp = _post(gw, {**CHAT, "model": "down-route"}, headers={"X-User-Id": "u"})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    assert resp.headers["x-abgate-experiment"] == "down"
    arm = resp.headers["x-abgate-arm"]
    _wait_for(lambda: r.exists(f"abgate:{{down}}:arm:{arm}") == 1)
    agg = r.hgetall(f"abgate:{{down}}:arm:{arm}")
    assert agg["errors"] == "1" and agg["status_5xx"] == "1"


def test_upstream_errors_pass_through(gw: Proc) -> None:
    resp = _post(gw, {**CHAT, "stream_options": {"include_usage": True}})
    assert resp.status_code == 400
    assert "Stream options can only be defined when `stream=True`." in resp.text


def test_no_unit_id_goes_to_control_by_default(gw: Proc) -> None:
    arms = {_post(gw, {**CHAT, "model": "support-bot"}).headers["x-abgate-arm"] for _ in range(5)}
    assert arms == {"control"}


def test_unit_from_headers_then_body_user(gw: Proc) -> None:
    by_header = _post(gw, CHAT, headers={"X-Tenant-Id": "acme"}).headers["x-abgate-arm"]
    by_body = _post(gw, {**CHAT, "user": "acme"}).headers["x-abgate-arm"]
    assert by_header == by_body
    # X-User-Id comes first
    arms = {
        _post(gw, CHAT, headers={"X-User-Id": f"p{i}", "X-Tenant-Id": "acme"}).headers[
            "x-abgate-arm"
        ]
        for i in range(30)
    }
    assert arms == {"control", "treatment"}


def test_metrics_show_documented_series(gw: Proc) -> None:
    _post(gw, CHAT, headers={"X-User-Id": "metrics"})
    text = httpx.get(gw.url + "/metrics").text
    for series in (
        'abgate_requests_total{arm="',
        "abgate_request_duration_seconds_bucket{",
        "abgate_time_to_first_token_seconds_bucket{",
        'abgate_tokens_total{arm="',
        "# TYPE abgate_cost_usd_total counter",
        "# TYPE abgate_upstream_errors_total counter",
        "abgate_event_queue_depth ",
        "# TYPE abgate_events_dropped_total counter",
        "abgate_events_written_total ",
        "abgate_config_version ",
        'abgate_experiment_treatment_share_ratio{experiment="ten",route="support-bot"} 0.1',
    ):
        assert series in text, series
    assert 'experiment="events"' in text and 'status_class="2xx"' in text
    assert "metrics" not in text.replace("_metrics", "")  # no user id as a label


def test_health_and_readiness(gw: Proc) -> None:
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["ready"] is True and ready["config_version"] >= 1 and ready["redis"] == "ok"


def test_live_share_change_reaches_the_gateway_and_only_adds_treatment_users(
    gw: Proc, stack_redis: EmbeddedRedis
) -> None:
    users = [f"ramp-{i}" for i in range(200)]

    def arms() -> dict[str, str]:
        return {
            u: _post(gw, {**CHAT, "model": "support-bot"}, headers={"X-User-Id": u}).headers[
                "x-abgate-arm"
            ]
            for u in users
        }

    before = arms()

    async def raise_share() -> None:
        client = aioredis.Redis.from_url(stack_redis.url)
        try:

            def mutate(exps: dict[str, Experiment]):  # type: ignore[no-untyped-def]
                old = exps["ten"]
                exps["ten"] = old.model_copy(update={"treatment_percent": 25.0})
                return exps, [AuditEntry("test", "set-share", "ten", None, None, "ramp")]

            await ConfigStore(client).update(mutate)
        finally:
            await client.aclose()

    asyncio.run(raise_share())
    _wait_for(
        lambda: 'experiment="ten",route="support-bot"} 0.25' in httpx.get(gw.url + "/metrics").text,
        timeout=5,
    )
    after = arms()
    moved_back = [u for u in users if before[u] == "treatment" and after[u] == "control"]
    assert moved_back == []
    assert sum(a == "treatment" for a in after.values()) > sum(
        a == "treatment" for a in before.values()
    )


def test_default_upstream_passthrough_and_auth_forwarding(
    tmp_path: Path, stack_redis: EmbeddedRedis
) -> None:
    with emulator(tmp_path, "--base-model", "base", "--api-key", "sekret") as emu:
        config = {
            "default_upstream": {"base_url": emu.url + "/v1"},
            "experiments": [experiment("auth", "auth-route", emu.url, 50)],
        }
        with gateway(tmp_path, config, stack_redis.url) as gw:
            ok = _post(gw, {**CHAT, "model": "base"}, headers={"Authorization": "Bearer sekret"})
            assert ok.status_code == 200
            assert "x-abgate-arm" not in ok.headers and ok.json()["model"] == "base"
            denied = _post(gw, {**CHAT, "model": "base"}, headers={"Authorization": "Bearer no"})
            assert denied.status_code == 401
            unknown = _post(
                gw, {**CHAT, "model": "nope"}, headers={"Authorization": "Bearer sekret"}
            )
            assert unknown.status_code == 404  # the upstream's own 404, passed through
            assert "nope" in unknown.text


def test_invalid_config_file_is_refused_with_the_field(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.procs import base_env, write_config

    cfg = write_config(tmp_path / "bad.yaml", {"experiments": [{"name": "x", "route": "r"}]})
    out = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", "1"],
        env=base_env(ABGATE_REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "experiments.0.control" in out.stderr and "Field required" in out.stderr
