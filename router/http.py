"""HTTP pieces shared by the proxy, the feedback route and the FastAPI app: ASGI type aliases,
request ids, the OpenAI-shaped error body and the intake of a JSON request body."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import GatewayError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- request ids ----------------------------------------------------------------------------


def new_request_id() -> str:
    """128 bits from the OS's CSPRNG: unguessable, so feedback cannot be forged for others."""
    return "req_" + os.urandom(16).hex()


class RequestIds:
    """`new_request_id` for the hot path: the same CSPRNG bytes, read 4 KiB at a time (one
    system call per 256 ids instead of one per request)."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def next(self) -> str:
        if self._pos + 16 > len(self._buf):
            self._buf, self._pos = os.urandom(4096), 0
        chunk = self._buf[self._pos : self._pos + 16]
        self._pos += 16
        return "req_" + chunk.hex()


# -- error bodies ---------------------------------------------------------------------------


def error_object(
    message: str,
    type_: str,
    param: str | None,
    code: str | int | None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"[, "request_id"]}}`` as OpenAI answers;
    the items of a feedback batch carry no request id of their own."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_body(
    message: str, type_: str, param: str | None, code: str | int | None, request_id: str
) -> bytes:
    """The serialised `error_object`, with the request id."""
    return orjson.dumps(error_object(message, type_, param, code, request_id))


async def send_error(
    send: Send, exc: GatewayError, rid: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    """Answer `exc` on a raw ASGI connection; `extra` headers replace the bare X-Request-Id."""
    payload = error_body(exc.message, exc.type, exc.param, exc.code, rid.decode())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra or [(b"x-request-id", rid)]),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# -- JSON request bodies --------------------------------------------------------------------

_OWS = b" \t"


def is_json_media_type(ctype: bytes) -> bool:
    """Whether a Content-Type names the media type ``application/json``: case-insensitive,
    whitespace around it and parameters after a ``;`` (``charset=utf-8``) allowed.

    The header is forwarded unchanged, so the gateway must accept only what the model server
    reads as JSON too, or it would route and record on a parse the model server never makes.
    vLLM's OpenAI routes accept exactly ``application/json`` (their `validate_json_request`:
    the header lowercased, up to the first ``;``); other types are refused there, so a prefix
    such as ``application/json-seq`` or ``application/jsonx`` is refused here (415). So are the
    structured-syntax ``application/*+json`` types: FastAPI alone would parse them as JSON, but
    vLLM refuses them and OpenAI documents ``application/json`` only, so accepting them would
    only turn the gateway's 415 into the model server's error, recorded against an arm.
    (vLLM does not strip whitespace before the ``;``: ``application/json ;charset=utf-8`` is
    legal HTTP and accepted here, and refused by vLLM as a client error, not read otherwise.)
    Any charset is accepted: JSON is UTF-8 (RFC 8259), orjson refuses other bytes, and
    Starlette's `Request.json()` ignores the parameter."""
    return ctype.split(b";", 1)[0].strip(_OWS).lower() == b"application/json"


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; a repeated Content-Type is refused, since
    the gateway and the model server could each read another one of them."""
    headers = dict(raw)
    if len(headers) != len(raw) and sum(k == b"content-type" for k, _ in raw) > 1:
        raise InvalidRequest("the request carries more than one Content-Type header")
    return headers


@dataclass(frozen=True, slots=True)
class JsonIntake:
    """Reads a JSON request body within a size limit; each endpoint words its own errors.

    `noun` names the body in the messages ("request body"); `media_type_message` is the 415
    message, where ``{got}`` stands for the Content-Type sent (quoted) or "no Content-Type";
    `name_declared_size` puts the declared Content-Length into the 413 message."""

    noun: str
    media_type_message: str
    name_declared_size: bool = False

    async def read(self, headers: Mapping[bytes, bytes], receive: Receive, limit: int) -> bytes:
        """The body, after checking its Content-Type and declared length; read in chunks and
        refused as soon as it grows past `limit`."""
        ctype = headers.get(b"content-type", b"")
        if not is_json_media_type(ctype):
            got = repr(ctype.decode("latin-1")) if ctype else "no Content-Type"
            raise UnsupportedMediaType(self.media_type_message.format(got=got))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            size = f" of {int(declared)} bytes" if self.name_declared_size else ""
            raise PayloadTooLarge(f"{self.noun}{size} exceeds {limit} bytes")
        chunks: list[bytes] = []
        size_read = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client closed the connection before sending the body")
            chunk = message.get("body", b"")
            if chunk:
                size_read += len(chunk)
                if size_read > limit:
                    raise PayloadTooLarge(f"{self.noun} exceeds {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def parse(self, raw: bytes) -> Any:
        """`raw` parsed by orjson; invalid JSON is the client's error."""
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the {self.noun} is not valid JSON: {exc}") from None
