"""Helpers for the vLLM emulator's tests: an app with test defaults, an in-process client, a LoRA
adapter directory, and SSE parsing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from serving.emulator import EmulatorConfig, create_app

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my order"}]


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
