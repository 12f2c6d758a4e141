"""The vLLM emulator speaks vLLM's HTTP API: shapes, statuses, messages, streaming, LoRA admin."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from serving.emulator import (
    EmulatorConfig,
    EmulatorSettings,
    ModelProfile,
    add_arguments,
    answer_is_good,
    build_config,
    create_app,
    generate,
    is_good_answer,
    parse_profile,
)

ROOT = Path(__file__).resolve().parents[2]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my order"}]
STREAM_OPTIONS_MESSAGE = "Stream options can only be defined when `stream=True`."


def make_app(**overrides: Any) -> FastAPI:
    settings: dict[str, Any] = {
        "base_model": "org/base-7b",
        "served_model_names": ["base", "alias"],
    }
    settings.update(overrides)
    return create_app(EmulatorConfig(**settings))


@asynccontextmanager
async def client_for(app: FastAPI, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vllm", **kwargs) as client:
        yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(allow_runtime_lora_updating=True)) as c:
        yield c


def adapter_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return path


def sse_events(body: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body; ``[DONE]`` stays a string."""
    assert body.endswith("\n\n")
    events: list[Any] = []
    for block in body[:-2].split("\n\n"):
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"messages": CHAT, **body})


# -- inference, non-streaming ------------------------------------------------------------------


async def test_chat_completion_has_vllm_shape(client: httpx.AsyncClient) -> None:
    response = await chat(client, model="base")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "base"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None
    words = choice["message"]["content"].split()
    assert 16 <= len(words) <= 64
    assert body["usage"]["prompt_tokens"] == 6  # words of all message contents
    assert body["usage"]["completion_tokens"] == len(words)
    assert body["usage"]["total_tokens"] == 6 + len(words)


async def test_text_is_deterministic_across_processes_and_depends_on_seed() -> None:
    contents = []
    for seed in (0, 0, 1):
        async with client_for(make_app(seed=seed)) as c:
            contents.append(
                (await chat(c, model="base")).json()["choices"][0]["message"]["content"]
            )
    assert contents[0] == contents[1]
    assert contents[0] != contents[2]


async def test_aliases_and_missing_model_answer_as_first_served_name(
    client: httpx.AsyncClient,
) -> None:
    bodies = [(await chat(client, **extra)).json() for extra in ({"model": "alias"}, {})]
    bodies.append((await chat(client, model="")).json())
    assert {body["model"] for body in bodies} == {"base"}
    assert len({body["choices"][0]["message"]["content"] for body in bodies}) == 1


async def test_max_tokens_cuts_with_length(client: httpx.AsyncClient) -> None:
    body = (await chat(client, max_completion_tokens=3, max_tokens=50)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split()) == 3
    assert body["usage"]["completion_tokens"] == 3


async def test_completions_shape_n_and_batch(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "base", "prompt": ["one two", "three"], "n": 2}
    )
    body = response.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] != body["choices"][1]["text"]
    assert body["usage"]["prompt_tokens"] == 3
    total = sum(len(choice["text"].split()) for choice in body["choices"])
    assert body["usage"]["completion_tokens"] == total


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    response = await chat(client, top_k=5, some_future_field={"x": 1})
    assert response.status_code == 200


async def test_request_id_header_is_echoed_and_names_the_response(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"messages": CHAT}, headers={"X-Request-Id": "req-42"}
    )
    assert response.headers["x-request-id"] == "req-42"
    assert response.json()["id"] == "chatcmpl-req-42"


async def test_context_length_is_enforced() -> None:
    async with client_for(make_app(max_model_len=10)) as c:
        response = await chat(c, max_tokens=8)
    assert response.status_code == 400
    assert "maximum context length is 10 tokens" in response.json()["error"]["message"]


# -- streaming ---------------------------------------------------------------------------------


async def test_chat_stream_chunk_order(client: httpx.AsyncClient) -> None:
    full = (await chat(client)).json()["choices"][0]["message"]["content"]
    response = await chat(client, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" not in chunk for chunk in chunks)
    content = chunks[1:]
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == full
    assert len(content) == len(full.split())


@pytest.mark.parametrize("options", [{"include_usage": True}, {}])
async def test_stream_usage_chunk_when_asked(
    client: httpx.AsyncClient, options: dict[str, Any]
) -> None:
    events = sse_events((await chat(client, stream=True, stream_options=options)).text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    words = sum(len(e["choices"][0]["delta"]["content"].split()) for e in events[1:-2])
    assert usage_chunk["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": words,
        "total_tokens": 6 + words,
    }
    assert all("usage" not in event for event in events[:-2])


@pytest.mark.parametrize("options", [None, {"include_usage": False}])
async def test_stream_has_no_usage_unless_asked(
    client: httpx.AsyncClient, options: dict[str, Any] | None
) -> None:
    events = sse_events((await chat(client, stream=True, stream_options=options)).text)
    assert events[-1] == "[DONE]"
    assert all(event["choices"] and "usage" not in event for event in events[:-1])


async def test_continuous_usage_stats(client: httpx.AsyncClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = sse_events((await chat(client, stream=True, stream_options=options)).text)[:-1]
    assert all("usage" in event for event in events)
    assert [e["usage"]["completion_tokens"] for e in events[:3]] == [0, 1, 2]


async def test_completions_stream(client: httpx.AsyncClient) -> None:
    body = {"prompt": "hello there", "max_tokens": 4, "stream": True}
    events = sse_events((await client.post("/v1/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    assert [e["object"] for e in events[:-1]] == ["text_completion"] * 4
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert len("".join(e["choices"][0]["text"] for e in events[:-1]).split()) == 4


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
)
@pytest.mark.parametrize("stream", [False, None])
async def test_stream_options_without_stream_is_400(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], stream: bool | None
) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}}
    if stream is not None:
        extra["stream"] = stream
    response = await client.post(path, json={**body, **extra})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": STREAM_OPTIONS_MESSAGE,
            "type": "BadRequestError",
            "param": "stream_options",
            "code": 400,
        }
    }


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_format", "expected"),
    [
        (
            "nested",
            {
                "error": {
                    "message": "The model `nope` does not exist.",
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
                "message": "The model `nope` does not exist.",
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
    for response in responses:
        assert response.status_code == 400
        body = response.json()
        inner = body if error_format == "flat" else body["error"]
        assert inner["type"] == "BadRequestError"
        assert inner["code"] == 400
        assert inner["message"]
        assert (body.get("object") == "error") is (error_format == "flat")
    wrong_type = responses[1].json()
    assert (wrong_type if error_format == "flat" else wrong_type["error"])["param"] == "messages"


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
    ):
        assert name in text


async def test_lora_metric_only_with_lora() -> None:
    registry = CollectorRegistry()
    async with client_for(create_app(EmulatorConfig(base_model="b"), registry=registry)) as c:
        text = (await c.get("/metrics")).text
    assert "vllm:e2e_request_latency_seconds" in text
    assert "vllm:lora_requests_info" not in text


# -- LoRA --------------------------------------------------------------------------------------


async def test_lora_lifecycle(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "sql"))
    load = await client.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": path})
    assert (load.status_code, load.text) == (
        200,
        "Success: LoRA adapter 'sql' added successfully.",
    )
    used = (await chat(client, model="sql")).json()
    assert used["model"] == "sql"
    base = (await chat(client, model="base")).json()
    assert used["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    cards = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}
    assert cards["sql"]["parent"] == "base"
    assert cards["sql"]["root"] == path
    assert cards["sql"]["max_model_len"] is None
    unload = await client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert (unload.status_code, unload.text) == (
        200,
        "Success: LoRA adapter 'sql' removed successfully.",
    )
    gone = await chat(client, model="sql")
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == "The model `sql` does not exist."
    ids = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["base", "alias"]


def invalid_input(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "InvalidUserInput", "param": None, "code": 400}}


async def test_lora_admin_errors(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "a"))
    load = "/v1/load_lora_adapter"
    assert (await client.post(load, json={"lora_name": "a", "lora_path": path})).status_code == 200
    twice = await client.post(load, json={"lora_name": "a", "lora_path": path})
    assert twice.status_code == 400
    assert twice.json() == invalid_input("The lora adapter 'a' has already been loaded.")
    empty = await client.post(load, json={"lora_name": "", "lora_path": path})
    assert empty.status_code == 400
    assert empty.json() == invalid_input("Both 'lora_name' and 'lora_path' must be provided.")
    (tmp_path / "empty").mkdir()
    for bad in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        response = await client.post(load, json={"lora_name": "b", "lora_path": bad})
        assert response.status_code == 404
        assert response.json()["error"] == {
            "message": f"Loading lora b failed: No adapter found for {bad}",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    unload = "/v1/unload_lora_adapter"
    no_name = await client.post(unload, json={"lora_name": ""})
    assert no_name.status_code == 400
    assert no_name.json() == invalid_input(
        "'lora_name' needs to be provided to unload a LoRA adapter."
    )
    unknown = await client.post(unload, json={"lora_name": "zzz"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The lora adapter 'zzz' cannot be found."


async def test_concurrent_loads_of_one_name_are_serialised(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = {"lora_name": "x", "lora_path": str(adapter_dir(tmp_path, "x"))}
    responses = await asyncio.gather(
        *(client.post("/v1/load_lora_adapter", json=body) for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400, 400]


async def test_admin_routes_absent_without_runtime_updating() -> None:
    async with client_for(make_app()) as c:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = await c.post(path, json={"lora_name": "a", "lora_path": "/x"})
            assert response.status_code == 404
            assert response.json() == {"detail": "Not Found"}


async def test_static_loras_and_adapter_shadows_base(tmp_path: Path) -> None:
    loras = {"base": str(adapter_dir(tmp_path, "shadow")), "b": str(adapter_dir(tmp_path, "b"))}
    async with client_for(make_app(static_loras=loras)) as c:
        body = (await chat(c, model="base")).json()
        cards = (await c.get("/v1/models")).json()["data"]
    assert body["model"] == "base"
    assert [(card["id"], card["parent"]) for card in cards] == [
        ("base", None),
        ("alias", None),
        ("base", "base"),
        ("b", "base"),
    ]


def test_static_lora_without_adapter_config_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No adapter found"):
        make_app(static_loras={"a": str(tmp_path)})


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


# -- quality -----------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [1.0, 0.0])
async def test_quality_decides_good_answers(quality: float) -> None:
    app = make_app(profiles={"base": ModelProfile(quality=quality)})
    async with client_for(app) as c:
        for prompt in range(20):
            response = await c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": f"question {prompt}"}]},
            )
            text = response.json()["choices"][0]["message"]["content"]
            assert is_good_answer(text) is (quality == 1.0)
            assert answer_is_good("base", f"question {prompt}", 0, quality) is (quality == 1.0)


def test_quality_rate_and_truncation() -> None:
    good = [generate("m", f"p{i}", seed=3, quality=0.3) for i in range(2000)]
    rate = sum(is_good_answer(g.text) for g in good) / len(good)
    assert 0.25 < rate < 0.35
    assert all(is_good_answer(g.text) is g.good for g in good)
    cut = generate("m", "p", seed=0, quality=1.0, max_tokens=5)
    assert cut.finish_reason == "length"
    assert not is_good_answer(cut.text)


# -- config and CLI ----------------------------------------------------------------------------


def test_parse_profile() -> None:
    name, profile = parse_profile(
        "support-lora-v2:latency_ms=20,ttft_ms=5,tokens_per_second=200,error_rate=0.01,quality=0.9"
    )
    assert name == "support-lora-v2"
    assert profile == ModelProfile(
        latency_ms=20, ttft_ms=5, tokens_per_second=200, error_rate=0.01, quality=0.9
    )
    assert parse_profile("x:") == ("x", ModelProfile())
    for spec, needle in [
        ("x:speed=3", "speed"),
        ("x:quality=high", "quality='high'"),
        ("x:error_rate=2", "error_rate=2.0"),
        ("x:latency_ms=-1", "latency_ms=-1.0"),
        ("no-colon", "NAME:"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_profile(spec)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="emulate")
    add_arguments(result)
    return result


def test_cli_builds_config(tmp_path: Path) -> None:
    path = adapter_dir(tmp_path, "a")
    argv = "--base-model b --served-model-name s1 s2 --error-format flat --quality 0.5"
    args = parser().parse_args([*argv.split(), "--lora", f"a={path}", "--profile", "a:quality=1"])
    settings = EmulatorSettings(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    config = build_config(args, settings)
    assert config.served_model_names == ["s1", "s2"]
    assert config.static_loras == {"a": str(path)}
    assert config.allow_runtime_lora_updating
    assert config.error_format == "flat"
    assert config.default_profile.quality == 0.5
    assert config.profiles["a"].quality == 1.0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--error-rate", "2"], "--error-rate"),
        (["--quality", "x"], "--quality"),
        (["--port", "99999"], "--port"),
        (["--profile", "a:bogus=1"], "--profile"),
        (["--lora", "a=/nonexistent"], "--lora"),
        (["--error-format", "xml"], "--error-format"),
    ],
)
def test_cli_rejects_bad_values_naming_the_flag(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--base-model", "b", *flags])
    assert f"argument {named}" in capsys.readouterr().err


@pytest.mark.parametrize(("raw", "on"), [("True", True), ("1", True), ("true", True), ("0", False)])
def test_runtime_lora_setting(raw: str, on: bool) -> None:
    assert EmulatorSettings(VLLM_ALLOW_RUNTIME_LORA_UPDATING=raw).allow_runtime_lora_updating is on


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
