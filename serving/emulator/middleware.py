"""Pure ASGI middleware of the emulator: vLLM's API-key check and ``X-Request-Id`` echo.

Both are plain ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import URL, Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiKeyMiddleware", "RequestIdMiddleware"]


class ApiKeyMiddleware:
    """``--api-key``: every HTTP path starting ``/v1`` needs ``Authorization: Bearer <key>``.

    A missing or wrong key gets 401 ``{"error": "Unauthorized"}``; ``OPTIONS`` requests and other
    paths (``/health``, ``/metrics``, ``/version``) pass.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            root_path = scope.get("root_path", "")
            path = URL(scope=scope).path.removeprefix(root_path)
            if path.startswith("/v1"):
                given = Headers(scope=scope).get("authorization", "").encode()
                if not hmac.compare_digest(given, self._expected):
                    response = JSONResponse({"error": "Unauthorized"}, status_code=401)
                    await response(scope, receive, send)
                    return
        await self._app(scope, receive, send)


class RequestIdMiddleware:
    """Echo the request's ``X-Request-Id`` on the response (``--enable-request-id-headers``)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get("x-request-id")
        if request_id is None:
            await self._app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        await self._app(scope, receive, send_with_id)
