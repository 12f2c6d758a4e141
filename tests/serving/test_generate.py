"""Batch generation for offline evals: retries, backoff, cache and concurrency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from serving.generate import BatchGenerator, GenerationRequest, OutputCache


def _chat(key: str, model: str = "m") -> GenerationRequest:
    return GenerationRequest(
        key, "chat/completions", {"model": model, "messages": [{"role": "user", "content": key}]}
    )


def _ok(text: str) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"message": {"content": text}}], "usage": {"prompt_tokens": 1}}
    )


async def test_retries_server_errors_then_succeeds_and_gives_up_on_client_errors() -> None:
    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = json.loads(request.content)["messages"][0]["content"]
        calls[key] = calls.get(key, 0) + 1
        if key == "flaky" and calls[key] < 3:
            return httpx.Response(503, json={"error": {"message": "busy", "code": 503}})
        if key == "bad":
            return httpx.Response(400, json={"error": {"message": "bad model", "code": 400}})
        if key == "down":
            raise httpx.ConnectError("refused")
        return _ok("answer to " + key)

    gen = BatchGenerator(
        "http://x/v1", retries=3, backoff_seconds=0.001, transport=httpx.MockTransport(handler)
    )
    async with gen:
        results = await gen.run([_chat("flaky"), _chat("bad"), _chat("down"), _chat("fine")])
    assert results["flaky"].text == "answer to flaky" and results["flaky"].attempts == 3
    assert results["bad"].error == "HTTP 400: bad model" and calls["bad"] == 1
    assert results["down"].error is not None and "connection failed" in results["down"].error
    assert calls["down"] == 4  # 1 + 3 retries
    assert results["fine"].usage == {"prompt_tokens": 1}


async def test_cache_makes_a_rerun_call_only_what_changed(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        key = json.loads(request.content)["messages"][0]["content"]
        seen.append(key)
        return _ok(key.upper()) if key != "fails" else httpx.Response(500, text="boom")

    path = tmp_path / "outputs.jsonl"
    for keys in (["a", "b", "fails"], ["a", "b", "c", "fails"]):
        gen = BatchGenerator(
            "http://x/v1", retries=0, cache=OutputCache(path),
            transport=httpx.MockTransport(handler),
        )  # fmt: skip
        async with gen:
            results = await gen.run([_chat(k) for k in keys])
        assert results["a"].text == "A"
    assert seen == ["a", "b", "fails", "c", "fails"]  # failures are not cached
    assert results["a"].cached and not results["c"].cached
    # a line cut short by a crash is ignored
    path.write_text(path.read_text() + '{"key": "d", "te')
    assert OutputCache(path).get("d") is None and OutputCache(path).get("c") == "C"


async def test_concurrency_is_bounded() -> None:
    running = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return _ok("x")

    gen = BatchGenerator("http://x/v1", concurrency=3, transport=httpx.MockTransport(handler))
    async with gen:
        done: list[str] = []
        await gen.run([_chat(str(i)) for i in range(20)], on_result=lambda r: done.append(r.key))
    assert peak == 3
    assert sorted(done, key=int) == [str(i) for i in range(20)]


async def test_text_completions_and_unusable_bodies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/completions"):
            return httpx.Response(200, json={"choices": [{"text": "plain"}]})
        return httpx.Response(200, json={"nothing": True})

    gen = BatchGenerator("http://x/v1/", retries=0, transport=httpx.MockTransport(handler))
    async with gen:
        results = await gen.run(
            [GenerationRequest("p", "completions", {"model": "m", "prompt": "hi"}), _chat("c")]
        )
    assert results["p"].text == "plain"
    assert results["c"].error == "unusable response: the response has no choices[0] text"


async def test_non_object_bodies_and_model_roots() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            cards = [{"id": "base", "root": "org/base"}, {"id": "lora", "root": "/adapters/v2"}]
            return httpx.Response(200, json={"data": cards})
        return httpx.Response(200, json=["not", "an", "object"])

    gen = BatchGenerator("http://x/v1", retries=0, transport=httpx.MockTransport(handler))
    async with gen:
        results = await gen.run([_chat("c")])
        assert await gen.model_roots() == {"base": "org/base", "lora": "/adapters/v2"}
    assert results["c"].error == "unusable response: the response is not a JSON object"
