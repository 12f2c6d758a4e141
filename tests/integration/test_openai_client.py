"""The official openai client, sync and async, streaming and not, through real processes."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.procs import Proc

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "Where is my parcel?"}]


def _client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)


def test_sync_chat_non_streaming(gw: Proc) -> None:
    with _client(gw) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="ab50-route",
            messages=MSG,
            extra_headers={"X-User-Id": "alice"},  # type: ignore[arg-type]
        )
        completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert len(raw.headers["x-request-id"]) == 4 + 32  # 128 bits, hex
    assert raw.headers["x-abgate-experiment"] == "ab50"
    arm = raw.headers["x-abgate-arm"]
    assert arm in ("control", "treatment")
    # the upstream saw the arm's model: vLLM answers with the adapter name or the base name
    assert completion.model == ("lora-a" if arm == "treatment" else "base")


def test_sync_chat_streaming_usage_only_when_asked(gw: Proc) -> None:
    with _client(gw) as client:
        chunks = list(
            client.chat.completions.create(
                model="ab50-route", messages=MSG, stream=True,  # type: ignore[arg-type]
                extra_headers={"X-User-Id": "bob"},
            )
        )  # fmt: skip
        assert chunks and all(c.choices for c in chunks), "usage-only chunk must be stripped"
        assert all(c.usage is None for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text
        with_usage = list(
            client.chat.completions.create(
                model="ab50-route", messages=MSG, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True}, extra_headers={"X-User-Id": "bob"},
            )
        )  # fmt: skip
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in with_usage[:-1]) == text


async def test_async_chat_both_modes(gw: Proc) -> None:
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="support-bot",
            messages=MSG,
            user="carol",  # type: ignore[arg-type]
        )
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(
            model="support-bot",
            messages=MSG,
            stream=True,
            user="carol",  # type: ignore[arg-type]
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts)


def test_legacy_completions(gw: Proc) -> None:
    with _client(gw) as client:
        completion = client.completions.create(
            model="ab50-route", prompt="Say hello", max_tokens=8, user="dave"
        )
        assert completion.choices[0].text
        streamed = list(
            client.completions.create(
                model="ab50-route", prompt="Say hello", max_tokens=8, user="dave", stream=True
            )
        )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text


def test_models_lists_the_route_aliases_and_nothing_behind_them(gw: Proc) -> None:
    """The official client reads the list; without a default upstream it holds the aliases
    only: the arms' models, and the adapter's filesystem root, stay behind the gateway."""
    with _client(gw) as client:
        models = list(client.models.list())
    ids = {m.id for m in models}
    assert {"ab50-route", "support-bot"} <= ids
    assert not ids & {"base", "lora-a"}
    assert all(set(m.model_dump(exclude_none=True)) <= {"id", "object", "created", "owned_by"}
               for m in models)  # fmt: skip


def test_stream_is_relayed_as_it_arrives(gw: Proc) -> None:
    """25 tokens/s upstream: the first chunk must arrive long before the last."""
    body = {"model": "slow-route", "messages": MSG, "stream": True, "max_tokens": 20}
    arrivals: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"X-User-Id": "e"}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.5  # spread over the upstream's pace, not one burst
    assert arrivals[1] < arrivals[-1] / 2
