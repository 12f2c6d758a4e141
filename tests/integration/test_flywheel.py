"""The data flywheel end to end: capture through the gateway, feedback, `abgate flywheel export`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from analysis.eval.cases import parse_cases
from router.runtime.embedded_redis import EmbeddedRedis
from tests.integration.test_cli import abgate
from tests.procs import Proc, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "fly-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def fgw(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[Proc]:
    config = {
        "experiments": [
            experiment(
                "fly", "fly-route", emu.url, 50,
                capture={"rate": 1.0, "redact": ["emails", "phone_numbers", r"ACCT-\d+"]},
            ),
            experiment("nocap", "nocap-route", emu.url, 50),
            experiment("capped", "capped-route", emu.url, 50,
                       capture={"rate": 1.0, "max_items": 3, "retention_days": 1}),
        ]
    }  # fmt: skip
    with gateway(
        tmp_path_factory.mktemp("fly"), config, stack_redis.url, admin_token=TOKEN
    ) as proc:
        yield proc


def _wait_captures(gw: Proc, name: str, n: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(f"{gw.url}/admin/experiments/{name}/captures", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        items: list[dict[str, object]] = r.json()["items"]
        if len(items) >= n or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_captured_failures_export_as_redacted_deduplicated_eval_cases(
    fgw: Proc, stack_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=fgw.url + "/v1", api_key="unused", max_retries=0)
    topics = ["refund", "invoice", "password", "shipping", "upgrade", "cancel"]
    prompts = [
        f"About my {t}: my email is user{i}@example.com and ACCT-{1000 + i} is locked, "
        f"call +1 555 010 {i:04d}"
        for i, t in enumerate(topics)
    ]
    rids = []
    for i, prompt in enumerate(prompts):
        stream = i % 2 == 1
        raw = client.chat.completions.with_raw_response.create(
            model="fly-route",
            messages=[{"role": "user", "content": prompt}],
            user=f"user-{i}",
            stream=stream,
        )
        rid = raw.headers["x-request-id"]
        body = raw.parse()
        if stream:
            for _ in body:  # type: ignore[union-attr]
                pass
        rids.append(rid)
    # thumbs-down on 0-3, an escalation on 4, nothing on 5; 0 arrives before or after the
    # capture is stored (the export must attach it either way)
    fb = [{"request_id": rids[i], "signal": "thumbs_down"} for i in range(4)]
    fb.append({"request_id": rids[4], "signal": "escalation"})
    resp = httpx.post(fgw.url + "/v1/feedback", json=fb, timeout=30)
    assert resp.status_code == 200, resp.text
    items = _wait_captures(fgw, "fly", 6)
    assert len(items) == 6
    stored = json.dumps(items)
    assert "@example.com" not in stored and "ACCT-" not in stored and "555 010" not in stored
    assert "[EMAIL]" in stored and "[REDACTED]" in stored and "[PHONE]" in stored
    by_rid = {i["request_id"]: i for i in items}
    assert by_rid[rids[0]]["signals"] == ["thumbs_down"]
    assert by_rid[rids[5]]["signals"] == []
    assert all(i["output"] for i in items)  # streamed answers were reassembled too

    # an existing eval file already holds prompt 2 (other case and spacing, same redaction)
    existing = tmp_path / "heldout.jsonl"
    seen = by_rid[rids[2]]["input"][0]["content"]  # type: ignore[index]
    existing.write_text(
        json.dumps({"id": "old-1", "input": "  " + seen.upper() + " ", "expected": "x"}) + "\n"
    )
    out = tmp_path / "next.jsonl"
    result = abgate(
        "flywheel", "export", "fly", "--signals", "thumbs_down,escalation",
        "--out", str(out), "--against", str(existing), url=fgw.url, token=TOKEN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 4 cases" in result.stderr, result.stderr
    cases = parse_cases(out.read_text(), str(out))
    exported = {c.metadata["request_id"] for c in cases}
    assert exported == {rids[0], rids[1], rids[3], rids[4]}  # 2 is a duplicate, 5 had no signal
    for case in cases:
        assert case.metadata["arm"] in ("control", "treatment")
        assert case.metadata["signals"] in (["thumbs_down"], ["escalation"])
        assert "@" not in json.dumps(case.model_dump())
    assert len({c.id for c in cases}) == len(cases)

    # a bad signal name is refused with a message, and nothing is written
    bad_out = tmp_path / "bad.jsonl"
    result = abgate(
        "flywheel", "export", "fly", "--signals", "thumbs_sideways", "--out", str(bad_out),
        url=fgw.url, token=TOKEN,
    )  # fmt: skip
    assert result.returncode == 1
    assert "thumbs_sideways is not a signal" in result.stderr
    assert not bad_out.exists()


def test_nothing_is_captured_when_capture_is_off(fgw: Proc, stack_redis: EmbeddedRedis) -> None:
    for i in range(5):
        r = httpx.post(
            fgw.url + "/v1/chat/completions",
            json={"model": "nocap-route", "messages": [{"role": "user", "content": f"hi {i}"}]},
            headers={"X-User-Id": f"u{i}"},
            timeout=30,
        )
        assert r.status_code == 200
    time.sleep(0.5)
    r = redis.Redis.from_url(stack_redis.url)
    try:
        assert r.keys("abgate:{nocap}:cap*") == []
    finally:
        r.close()
    assert _wait_captures(fgw, "nocap", 0) == []


def test_capture_keeps_only_the_newest_max_items(fgw: Proc, stack_redis: EmbeddedRedis) -> None:
    rids = []
    for i in range(6):
        r = httpx.post(
            fgw.url + "/v1/chat/completions",
            json={"model": "capped-route", "messages": [{"role": "user", "content": f"q{i}"}]},
            headers={"X-User-Id": f"c{i}"},
            timeout=30,
        )
        assert r.status_code == 200
        rids.append(r.headers["x-request-id"])
        time.sleep(0.05)  # keep the order of arrival at the writer
    deadline = time.monotonic() + 10
    client = redis.Redis.from_url(stack_redis.url, decode_responses=True)
    try:
        while time.monotonic() < deadline:
            kept = client.lrange("abgate:{capped}:captures", 0, -1)
            if kept and kept[0] == rids[-1]:
                break
            time.sleep(0.05)
        assert kept == list(reversed(rids[-3:]))
        hashes = client.keys("abgate:{capped}:cap:*")
        assert sorted(hashes) == sorted(f"abgate:{{capped}}:cap:{r}" for r in rids[-3:])
        ttl = client.ttl(f"abgate:{{capped}}:cap:{rids[-1]}")
        assert 86000 < ttl <= 86400
    finally:
        client.close()
