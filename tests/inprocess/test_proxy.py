"""The completion proxy in process: sticky arms, usage recorded per arm, streams, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router import keys
from tests.inprocess.conftest import GatewayFactory, arm_totals, serve_emulator
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

RID = re.compile(r"^req_[0-9a-f]{32}$")
MODEL_OF_ARM = {"control": "base", "treatment": "lora-a"}


def sse(body: str) -> list[Any]:
    """The ``data:`` payloads of an event stream; ``[DONE]`` stays a string."""
    events: list[Any] = []
    for block in body.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def recorded(rds: redis.Redis) -> int:
    """Request index entries: one per request the gateway recorded."""
    return sum(1 for _ in rds.scan_iter(keys.request("*"), count=1000))


async def test_sticky_arms_and_usage_recorded_per_arm(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    config = {"experiments": [experiment("px-sticky", "px-sticky-route", emu, 50)]}
    async with start_gateway(config) as gw:
        usage = {arm: {"requests": 0, "prompt": 0, "completion": 0} for arm in MODEL_OF_ARM}
        first: dict[str, str] = {}
        ids: set[str] = set()
        for rnd in range(2):
            for i in range(20):
                user = f"px-user-{i}"
                resp = await gw.chat("px-sticky-route", user, max_tokens=4 + i % 5)
                assert resp.status_code == 200, resp.text
                rid, arm = resp.headers["x-request-id"], resp.headers["x-abgate-arm"]
                assert RID.match(rid) and rid not in ids
                ids.add(rid)
                assert resp.headers["x-abgate-experiment"] == "px-sticky"
                assert first.setdefault(user, arm) == arm, f"{user} changed arm in round {rnd}"
                data = resp.json()
                assert data["model"] == MODEL_OF_ARM[arm]  # the arm's model answered
                usage[arm]["requests"] += 1
                usage[arm]["prompt"] += data["usage"]["prompt_tokens"]
                usage[arm]["completion"] += data["usage"]["completion_tokens"]
        assert set(first.values()) == {"control", "treatment"}
        await gw.drain()
    for arm, expected in usage.items():
        agg = arm_totals(rds, "px-sticky", arm)
        assert agg["requests"] == expected["requests"]
        assert agg["prompt_tokens"] == expected["prompt"]
        assert agg["completion_tokens"] == expected["completion"] > 0
        assert agg.get("errors", 0) == 0 and agg["status_2xx"] == expected["requests"]
        assert agg.get("ttft_count", 0) == 0  # not streamed: no time to first token
    for rid in ids:
        code, exp_name, unit = str(rds.get(keys.request(rid))).split("|")
        assert exp_name == "px-sticky" and code == first[unit][0]


async def test_stream_relayed_with_done_and_usage_chunk_only_when_asked(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    config = {"experiments": [experiment("px-stream", "px-stream-route", emu, 50)]}
    async with start_gateway(config) as gw:
        plain = await gw.chat("px-stream-route", "px-s1", stream=True, max_tokens=6)
        assert plain.status_code == 200, plain.text
        assert plain.headers["content-type"].startswith("text/event-stream")
        events = sse(plain.text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert chunks and all(c["choices"] for c in chunks)  # the usage-only chunk is gone
        assert all(c.get("usage") is None for c in chunks)
        arm = plain.headers["x-abgate-arm"]
        assert {c["model"] for c in chunks} == {MODEL_OF_ARM[arm]}

        asked = await gw.chat(
            "px-stream-route",
            "px-s1",
            stream=True,
            max_tokens=6,
            stream_options={"include_usage": True},
        )
        assert asked.status_code == 200 and asked.headers["x-abgate-arm"] == arm
        events = sse(asked.text)
        assert events[-1] == "[DONE]"
        usage_only = [c for c in events[:-1] if c["choices"] == []]
        assert len(usage_only) == 1 and usage_only[0]["usage"]["completion_tokens"] > 0
        await gw.drain()
    agg = arm_totals(rds, "px-stream", arm)
    assert agg["requests"] == 2 and agg["ttft_count"] == 2
    # the gateway asked for usage on the plain stream too, and recorded it
    assert agg["completion_tokens"] == 2 * usage_only[0]["usage"]["completion_tokens"]
    assert agg["prompt_tokens"] == 2 * usage_only[0]["usage"]["prompt_tokens"]


LARGE = b'{"model": "px-bad-route", "x": "' + b"a" * 2_000 + b'"}'
JSON = "application/json"
BAD_INPUT: dict[str, tuple[bytes, str | None, int, str]] = {
    "json": (b'{"model": "px-bad-route", "messages": [', JSON, 400, "not valid JSON"),
    "not-object": (b'["model"]', JSON, 400, "JSON object"),
    "no-model": (b'{"messages": []}', JSON, 400, "model"),
    "model-not-string": (b'{"model": 7}', JSON, 400, "model"),
    "unknown-alias": (b'{"model": "no-such-alias", "messages": []}', JSON, 404, "no-such-alias"),
    "text-plain": (b'{"model": "px-bad-route"}', "text/plain", 415, "Content-Type"),
    "no-content-type": (b'{"model": "px-bad-route"}', None, 415, "Content-Type"),
    "too-large": (LARGE, JSON, 413, "exceeds"),
}


@pytest.mark.parametrize(
    ("content", "ctype", "status", "needle"), list(BAD_INPUT.values()), ids=list(BAD_INPUT)
)
async def test_bad_input_is_refused_in_openai_shape_and_not_recorded(
    emu: str,
    start_gateway: GatewayFactory,
    rds: redis.Redis,
    content: bytes,
    ctype: str | None,
    status: int,
    needle: str,
) -> None:
    config = {"experiments": [experiment("px-bad", "px-bad-route", emu, 50)]}
    async with start_gateway(config, max_body_bytes=1_000) as gw:
        headers = {"content-type": ctype} if ctype is not None else {}
        resp = await gw.client.post("/v1/chat/completions", content=content, headers=headers)
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/json"
        err = resp.json()["error"]
        assert needle in err["message"]
        assert {"message", "type", "param", "code"} <= set(err)
        assert err["type"] == "invalid_request_error"
        assert err["request_id"] == resp.headers["x-request-id"]
        assert RID.match(err["request_id"])
        assert "x-abgate-arm" not in resp.headers
        if status == 404:
            assert err["code"] == "model_not_found" and err["param"] == "model"
        await gw.drain()
    assert recorded(rds) == 0


async def test_default_upstream_passthrough(
    tmp_path: Path, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with serve_emulator(tmp_path, api_key="sekret") as emu:
        config = {
            "default_upstream": {"base_url": emu + "/v1"},
            "experiments": [experiment("px-default", "px-default-route", emu, 50)],
        }
        async with start_gateway(config) as gw:

            async def ask(model: str, key: str) -> httpx.Response:
                return await gw.client.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {key}"},
                )

            ok = await ask("base", "sekret")
            assert ok.status_code == 200, ok.text
            assert ok.json()["model"] == "base"
            assert RID.match(ok.headers["x-request-id"])
            assert "x-abgate-arm" not in ok.headers and "x-abgate-experiment" not in ok.headers
            denied = await ask("base", "wrong")
            assert denied.status_code == 401  # the upstream's answer, passed through
            unknown = await ask("nope", "sekret")
            assert unknown.status_code == 404  # the upstream's own 404, not the gateway's
            assert "nope" in unknown.text
            await gw.drain()
    assert recorded(rds) == 0  # passthrough traffic is in no experiment
