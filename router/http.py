"""ASGI type aliases and the OpenAI-shaped error body, shared by the proxy and the FastAPI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def error_body(
    message: str, type_: str, param: str | None, code: str | int | None, request_id: str
) -> bytes:
    """``{"error": {"message", "type", "param", "code", "request_id"}}`` as OpenAI answers."""
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": type_,
                "param": param,
                "code": code,
                "request_id": request_id,
            }
        }
    )
