"""Feedback through the official flow, its failure answers, concurrency and regenerations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from router import keys
from router.runtime.embedded_redis import EmbeddedRedis
from router.signals.readmodel import decode_unit_totals
from tests.procs import Proc, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "fb-token"
MSG = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture(scope="module")
def fgw(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[Proc]:
    config = {
        "experiments": [
            experiment("fb", "fb-route", emu.url, 50, signals=["csat"]),
            experiment(
                "fbshort",
                "fbshort-route",
                emu.url,
                50,
                feedback_window_seconds=1,
                regeneration_window_seconds=1,
            ),
            experiment("noregen", "noregen-route", emu.url, 50, detect_regenerations=False),
        ]
    }
    with gateway(tmp_path_factory.mktemp("fb"), config, stack_redis.url, admin_token=TOKEN) as gw:
        yield gw


@pytest.fixture
def r(stack_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack_redis.url, decode_responses=True)
    yield client
    client.close()


def ask(gw: Proc, user: str, route: str = "fb-route", content: str = "Where is my parcel?") -> str:
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": route, "messages": [{"role": "user", "content": content}]},
        headers={"X-User-Id": user},
        timeout=30,
    )
    assert resp.status_code == 200
    return resp.headers["x-request-id"]


def post(gw: Proc, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/feedback", json=body, timeout=30, **kw)


def snapshot(gw: Proc, name: str = "fb") -> dict[str, Any]:
    resp = httpx.get(gw.url + f"/admin/experiments/{name}/snapshot",
                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def feedback_total(gw: Proc) -> int:
    s = snapshot(gw)
    return int(s["control"]["totals"]["feedback"] + s["treatment"]["totals"]["feedback"])


def test_official_flow_attributes_feedback_to_arm_and_unit(fgw: Proc, r: redis.Redis) -> None:
    with openai.OpenAI(base_url=fgw.url + "/v1", api_key="k", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fb-route",
            messages=MSG,
            extra_headers={"X-User-Id": "flow-user"},  # type: ignore[arg-type]
        )
    rid, arm = raw.headers["x-request-id"], raw.headers["x-abgate-arm"]
    before = snapshot(fgw)[arm]
    resp = post(fgw, {"request_id": rid, "signal": "thumbs_up"})
    assert resp.status_code == 202
    assert resp.json() == {"request_id": rid, "signal": "thumbs_up", "arm": arm,
                           "experiment": "fb", "result": "accepted"}  # fmt: skip
    after = snapshot(fgw)[arm]
    assert after["totals"]["signal_counts"]["thumbs_up"] == before["totals"]["signal_counts"].get(
        "thumbs_up", 0) + 1  # fmt: skip
    assert after["units"]["s1"]["fb:thumbs_up"] == before["units"]["s1"].get("fb:thumbs_up", 0) + 1
    assert after["units"]["s1"]["votes"] == before["units"]["s1"].get("votes", 0) + 1
    unit = decode_unit_totals(r.hget(keys.unit_totals("fb", arm), "flow-user") or "")
    assert unit["fb:thumbs_up"] == 1 and unit["requests"] == 1
    metrics = httpx.get(fgw.url + "/metrics").text
    assert (
        f'abgate_feedback_total{{arm="{arm}",experiment="fb",route="fb-route",signal="thumbs_up"}}'
        in metrics
    )


def test_duplicates_unknown_malformed_and_oversized(fgw: Proc) -> None:
    rid = ask(fgw, "dup-user")
    assert post(fgw, {"request_id": rid, "signal": "escalation"}).status_code == 202
    counted = feedback_total(fgw)
    dup = post(fgw, {"request_id": rid, "signal": "escalation"})
    assert dup.status_code == 200 and dup.json()["result"] == "duplicate"
    forged = "req_" + "0123456789abcdef" * 2
    bad: list[tuple[Any, int, str]] = [
        ({"request_id": forged, "signal": "thumbs_up"}, 404, "unknown or expired"),
        ({"request_id": "abc", "signal": "thumbs_up"}, 422, "request_id"),
        ({"request_id": rid, "signal": "love"}, 422, "unknown signal 'love'"),
        ({"request_id": rid, "signal": "csat", "value": "high"}, 422, "value must be a number"),
        ({"request_id": rid, "signal": "csat", "value": True}, 422, "value must be a number"),
        ({"request_id": rid, "signal": "csat", "value": 1e300}, 422, "finite"),
        ({"request_id": rid, "signal": "csat", "extra": 1}, 422, "extra"),
        ({"request_id": rid}, 422, "signal"),
        ("thumbs_up", 422, "object"),
        ([], 422, "empty"),
        ([{"request_id": rid, "signal": "resolved"}] * 1001, 413, "at most 1000"),
    ]
    for body, status, needle in bad:
        resp = post(fgw, body)
        assert resp.status_code == status, (
            body if not isinstance(body, list) else len(body),
            resp.text,
        )
        assert needle in resp.json()["error"]["message"]
    raw = httpx.post(fgw.url + "/v1/feedback", content=b'{"request_id": ', timeout=10,
                     headers={"content-type": "application/json"})  # fmt: skip
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    text = httpx.post(fgw.url + "/v1/feedback", content=b"x", timeout=10)
    assert text.status_code == 415
    huge = httpx.post(
        fgw.url + "/v1/feedback",
        timeout=10,
        headers={"content-type": "application/json"},
        content=b'{"request_id": "' + b"x" * 2_000_000 + b'"}',
    )
    assert huge.status_code == 413
    assert feedback_total(fgw) == counted  # nothing counted by any of those


def test_custom_signal_values_and_batch(fgw: Proc) -> None:
    a, b = ask(fgw, "batch-a"), ask(fgw, "batch-b")
    resp = post(fgw, [
        {"request_id": a, "signal": "csat", "value": 4.5},
        {"request_id": b, "signal": "csat", "value": 2},
        {"request_id": a, "signal": "csat", "value": 1},
        {"request_id": "req_" + "f" * 32, "signal": "resolved"},
        {"request_id": b, "signal": "nope"},
    ])  # fmt: skip
    assert resp.status_code == 200
    statuses = [item["status"] for item in resp.json()["results"]]
    assert statuses == [202, 202, 200, 404, 422]
    s = snapshot(fgw)
    total = sum(
        s[arm]["totals"]["signal_value_sums"].get("csat", 0) for arm in ("control", "treatment")
    )
    assert total == pytest.approx(6.5)


def test_expired_request_ids_are_refused(fgw: Proc) -> None:
    rid = ask(fgw, "late-user", route="fbshort-route")
    time.sleep(2.2)
    resp = post(fgw, {"request_id": rid, "signal": "thumbs_down"})
    assert resp.status_code == 404


def test_fifty_concurrent_posters_count_once(fgw: Proc) -> None:
    rid = ask(fgw, "race-user")
    before = feedback_total(fgw)
    codes: list[int] = []
    barrier = threading.Barrier(50)

    def poster() -> None:
        barrier.wait()
        codes.append(post(fgw, {"request_id": rid, "signal": "resolved"}).status_code)

    threads = [threading.Thread(target=poster) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 49 + [202]
    assert feedback_total(fgw) == before + 1


def _regenerated(r: redis.Redis, exp: str, rid: str) -> bool:
    return bool(r.sismember(f"abgate:{{{exp}}}:fb:{rid}", "regenerated"))


def _settle(r: redis.Redis, rid: str) -> None:
    deadline = time.monotonic() + 5
    while not r.exists(f"abgate:req:{rid}"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_regeneration_detector(fgw: Proc, r: redis.Redis) -> None:
    first = ask(fgw, "regen-user", content="Where is my parcel?")
    second = ask(fgw, "regen-user", content="  where is my PARCEL ")  # nearly equal
    _settle(r, second)
    assert _regenerated(r, "fb", first)
    assert not _regenerated(r, "fb", second)

    # another unit asking the same thing is not a regeneration
    other = ask(fgw, "regen-other", content="Where is my parcel?")
    _settle(r, other)
    assert not _regenerated(r, "fb", other)
    # a different prompt is not either
    third = ask(fgw, "regen-user", content="Can I pay by invoice?")
    _settle(r, third)
    assert not _regenerated(r, "fb", second)

    # outside the window (1 s on fbshort) it does not fire
    late1 = ask(fgw, "regen-late", route="fbshort-route")
    time.sleep(1.5)
    late2 = ask(fgw, "regen-late", route="fbshort-route")
    _settle(r, late2)
    assert not _regenerated(r, "fbshort", late1)
    # inside it does
    quick1 = ask(fgw, "regen-quick", route="fbshort-route")
    quick2 = ask(fgw, "regen-quick", route="fbshort-route")
    _settle(r, quick2)
    assert _regenerated(r, "fbshort", quick1)

    # switched off per experiment
    off1 = ask(fgw, "regen-off", route="noregen-route")
    off2 = ask(fgw, "regen-off", route="noregen-route")
    _settle(r, off2)
    assert not _regenerated(r, "noregen", off1)


def test_units_gauge(fgw: Proc) -> None:
    for i in range(5):
        ask(fgw, f"gauge-{i}")
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(fgw.url + "/metrics").text
        lines = [
            line for line in text.splitlines()
            if line.startswith("abgate_experiment_units{") and 'experiment="fb"' in line
        ]  # fmt: skip
        gauge = sum(float(line.split()[-1]) for line in lines)
        s = snapshot(fgw)
        units = s["control"]["units"]["units"] + s["treatment"]["units"]["units"]
        if gauge == units and units >= 5:
            break
        assert time.monotonic() < deadline, (lines, units)
        time.sleep(0.2)
