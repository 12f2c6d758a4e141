"""The vLLM emulator's errors, operational endpoints, metrics and auth; a real process with the
official client."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from serving.emulator import EmulatorConfig, ModelProfile, create_app
from tests.serving.emulator_helpers import CHAT, adapter_dir, chat, client_for, make_app, sse_events

ROOT = Path(__file__).resolve().parents[2]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_format", "expected"),
    [
        (
            "nested",
            {
                "error": {
                    "message": "The model `nope` does not exist. Valid aliases: base, alias.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            },
        ),
        (
            "flat",
            {
                "object": "error",
                "message": "The model `nope` does not exist. Valid aliases: base, alias.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            },
        ),
    ],
)
async def test_unknown_model_is_404_in_both_shapes(
    error_format: str, expected: dict[str, Any]
) -> None:
    async with client_for(make_app(error_format=error_format)) as c:
        for path, body in (("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {})):
            response = await c.post(path, json={"model": "nope", "prompt": "x", **body})
            assert response.status_code == 404
            assert response.json() == expected


@pytest.mark.parametrize("error_format", ["nested", "flat"])
async def test_invalid_body_is_400_bad_request(error_format: str) -> None:
    async with client_for(make_app(error_format=error_format)) as c:
        responses = [
            await c.post(
                "/v1/chat/completions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            await c.post("/v1/chat/completions", json={"messages": "not a list"}),
            await c.post("/v1/chat/completions", json={"messages": CHAT, "n": 0}),
            await c.post("/v1/completions", json={"prompt": ""}),
        ]
    inners = []
    for response in responses:
        assert response.status_code == 400
        body = response.json()
        inner = body if error_format == "flat" else body["error"]
        assert inner["code"] == 400
        assert inner["message"]
        assert (body.get("object") == "error") is (error_format == "flat")
        inners.append(inner)
    # as vLLM 0.32: a body that fails to parse or type-check is "Bad Request" with the dotted
    # location as param; vLLM's own checks are BadRequestError
    assert [(i["type"], i["param"]) for i in inners] == [
        ("Bad Request", "body.1"),
        ("Bad Request", "body.messages"),
        ("BadRequestError", None),
        ("BadRequestError", "prompt"),
    ]
    assert inners[1]["message"].startswith("1 validation error:\n  {'type': 'list_type', ")
    assert inners[2]["message"] == "n must be at least 1, got 0."


@pytest.mark.parametrize("error_format", ["nested", "flat"])
async def test_error_rate_one_fails_non_streaming_with_500(error_format: str) -> None:
    app = make_app(error_format=error_format, default_profile=ModelProfile(error_rate=1.0))
    async with client_for(app) as c:
        response = await chat(c)
    assert response.status_code == 500
    body = response.json()
    inner = body if error_format == "flat" else body["error"]
    assert inner["type"] == "InternalServerError"
    assert inner["code"] == 500


@pytest.mark.parametrize("error_format", ["nested", "flat"])
async def test_error_rate_one_fails_streams_before_or_midway(error_format: str) -> None:
    app = make_app(error_format=error_format, default_profile=ModelProfile(error_rate=1.0))
    kinds = set()
    async with client_for(app) as c:
        for _ in range(16):
            response = await chat(c, stream=True)
            if response.status_code == 500:
                kinds.add("before")
                continue
            assert response.status_code == 200
            events = sse_events(response.text)
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            assert events[1]["choices"][0]["delta"]["content"]
            error = events[2]["error"]
            assert error["code"] == 500
            assert error["type"] == "InternalServerError"
            assert (error.get("object") == "error") is (error_format == "flat")
            assert events[3:] == ["[DONE]"]
            kinds.add("mid")
    assert kinds == {"before", "mid"}


# -- models, health, metrics -------------------------------------------------------------------


async def test_operational_endpoints(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert (health.status_code, health.content) == (200, b"")
    assert "version" in (await client.get("/version")).json()
    assert (await client.get("/load")).json() == {"server_load": 0}


async def test_load_counts_in_flight_requests() -> None:
    app = make_app(default_profile=ModelProfile(ttft_ms=300))
    async with client_for(app) as c:
        pending = asyncio.create_task(chat(c))
        await asyncio.sleep(0.1)
        during = (await c.get("/load")).json()
        started = time.monotonic()
        assert (await pending).status_code == 200
        assert time.monotonic() - started > 0.05
        after = (await c.get("/load")).json()
    assert (during, after) == ({"server_load": 1}, {"server_load": 0})


async def test_streams_are_paced_by_tokens_per_second() -> None:
    app = make_app(default_profile=ModelProfile(ttft_ms=20, tokens_per_second=200))
    async with client_for(app) as c:
        started = time.monotonic()
        events = sse_events((await chat(c, stream=True, max_tokens=10)).text)
        elapsed = time.monotonic() - started
    assert len(events) == 12  # role, 10 words, [DONE]
    assert elapsed >= 0.02 + 10 / 200


async def test_models_lists_served_names() -> None:
    async with client_for(make_app(max_model_len=4096)) as c:
        body = (await c.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == ["base", "alias"]
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["owned_by"] == "vllm"
        assert card["root"] == "org/base-7b"
        assert card["parent"] is None
        assert card["max_model_len"] == 4096
        assert len(card["permission"]) == 1


async def test_metrics_use_vllm_names_and_labels(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    assert 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="base"} 0.0' in before
    await chat(client, model="alias")
    text = (await client.get("/metrics")).text
    assert 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="base"} 1.0' in text
    assert 'vllm:request_success_total{engine="0",finished_reason="stop",model_name="base"}' in text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:lora_requests_info",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:request_prompt_tokens_bucket",
        "vllm:request_generation_tokens_bucket",
        "vllm:request_params_n_bucket",
        "vllm:request_params_max_tokens_bucket",
        "vllm:request_max_num_generation_tokens_bucket",
        "vllm:iteration_tokens_total_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:request_time_per_output_token_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:request_inference_time_seconds_bucket",
        "vllm:request_prefill_time_seconds_bucket",
        "vllm:request_decode_time_seconds_bucket",
        "vllm:cache_config_info",
    ):
        assert name in text
    # the same prompt again is a prefix-cache hit for all its tokens (6 words)
    assert 'vllm:prefix_cache_queries_total{engine="0",model_name="base"} 6.0' in text
    assert 'vllm:prefix_cache_hits_total{engine="0",model_name="base"} 0.0' in text
    await chat(client, model="alias")
    text = (await client.get("/metrics")).text
    assert 'vllm:prefix_cache_hits_total{engine="0",model_name="base"} 6.0' in text
    assert 'vllm:request_generation_tokens_count{engine="0",model_name="base"} 2.0' in text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="base"} 0.0' in text  # all done


async def test_lora_metric_only_with_lora() -> None:
    registry = CollectorRegistry()
    async with client_for(create_app(EmulatorConfig(base_model="b"), registry=registry)) as c:
        text = (await c.get("/metrics")).text
    assert "vllm:e2e_request_latency_seconds" in text
    assert "vllm:lora_requests_info" not in text


# -- auth --------------------------------------------------------------------------------------


async def test_api_key_guards_v1_only() -> None:
    async with client_for(make_app(api_key="sekret", allow_runtime_lora_updating=True)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for path in ("/v1/models", "/v1/load_lora_adapter"):
                response = await c.request(
                    "GET" if path == "/v1/models" else "POST", path, headers=headers
                )
                assert response.status_code == 401
                assert response.json() == {"error": "Unauthorized"}
        ok = await c.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        for path in ("/health", "/metrics", "/version"):
            assert (await c.get(path)).status_code == 200


# -- a real process and the official client ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    cmd = [sys.executable, "-m", "serving.emulator", "--port", str(port), "--base-model", "base"]
    log_path = tmp_path / "emulator.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_real_process_with_openai_client(emulator_process: str, tmp_path: Path) -> None:
    url = emulator_process
    body = {"lora_name": "sql", "lora_path": str(adapter_dir(tmp_path, "sql"))}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=body).status_code == 200
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        completion = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.model == "base"
        assert completion.choices[0].message.content
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 1
        with client.chat.completions.create(
            model="sql",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = list(stream)
        assert {chunk.model for chunk in chunks} == {"sql"}
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens == len(text.split())
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
