"""The vLLM emulator's inference API: chat and text completions, streaming, answer quality."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from serving.emulator import ModelProfile, answer_is_good, generate, is_good_answer
from tests.serving.emulator_helpers import CHAT, chat, client_for, make_app, sse_events

STREAM_OPTIONS_MESSAGE = (
    "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
)


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
    """As vLLM 0.32: max_tokens above the context length and prompts that fill it are refused;
    a max_tokens beyond the room the prompt leaves is cut to that room."""
    async with client_for(make_app(max_model_len=10)) as c:
        too_many = await chat(c, max_tokens=11)
        cut = await c.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 10})
        full = await c.post("/v1/completions", json={"prompt": " ".join(["w"] * 10)})
        over = await c.post("/v1/completions", json={"prompt": " ".join(["w"] * 12)})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "max_tokens"
    assert too_many.json()["error"]["message"].startswith(
        "max_tokens=11 cannot be greater than max_model_len=10."
    )
    assert cut.status_code == 200 and cut.json()["usage"]["total_tokens"] <= 10
    assert full.status_code == 400
    assert full.json()["error"]["message"].startswith("max_tokens must be at least 1, got 0.")
    assert over.status_code == 400 and over.json()["error"]["param"] == "input_tokens"
    assert "your prompt contains 12 input tokens" in over.json()["error"]["message"]


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
