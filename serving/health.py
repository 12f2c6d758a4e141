"""Active health checks of model-server replicas, and the names of what went wrong.

A check never takes a replica out for lacking a health endpoint. It asks the target's health
path (by default vLLM's `/health` at the server root, the base URL without its `/v1`):

- 2xx: alive; the model list is then read from `<base_url>/models`.
- 404 or 405: the server has no health endpoint there (a proxy, an ingress, a hosted API, a
  server behind a path prefix), which says nothing about its health. `GET <base_url>/models`
  decides instead: 2xx is alive (and gives the model list), 401 or 403 is alive too (the server
  answered; it wants a key the checker does not send), 404 or 405 leaves the replica to passive
  outlier detection on real traffic.
- any other status, a refused connection or a timeout: out, with that reason.

Reasons are short, stable words ("timeout", "connect_refused", "status_503") that the gateway
reports in `/readyz`, in logs and in error messages.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

import aiohttp
import orjson

from serving.errors import UpstreamError

#: what decided the replica's health in its last check
CHECK_PENDING = "pending"  # not checked yet
CHECK_HEALTH = "health"  # its health path answered
CHECK_MODELS = "models"  # no health path; its model list answered
CHECK_PASSIVE = "passive"  # neither: real traffic decides (outlier ejection)
CHECK_OFF = "off"  # active checks switched off (`health_path: null`)

_ABSENT = (404, 405)  # "no such endpoint here", not "down"
_LOCKED = (401, 403)  # the server answered; it wants a key


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check.

    `alive` None means "no verdict": keep the replica's current health (its health path is
    fine but its model list could not be read; a replica coming back waits for the list, so it
    is never routed on a stale one). `models` None: the list is unknown (no filtering)."""

    alive: bool | None
    check: str
    reason: str = ""
    models: frozenset[str] | None = None
    keep_models: bool = False  # the list could not be read: keep the one known


def server_root(base_url: str) -> str:
    """`http://vllm:8000/v1` -> `http://vllm:8000`, `http://h/openai/v1` -> `http://h/openai`."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def failure_reason(exc: BaseException) -> str:
    """A short name for why a request to a replica failed."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the cause chain, for a refused connect
        seen.add(id(cur))
        if _refused(cur):
            return "connect_refused"
        cur = cur.__cause__
    if isinstance(exc, UpstreamError):
        return exc.reason
    return "connect"


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    os_error = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError
    return isinstance(os_error, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
    )


async def _get(session: aiohttp.ClientSession, url: str, limit: float) -> tuple[int, bytes] | str:
    """Status and body of `GET url` within `limit` seconds, or the reason it failed."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return failure_reason(exc)


def model_cards(body: bytes) -> list[object] | None:
    """The `data` list of a `/v1/models` answer, or None when the body is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    cards = data.get("data") if isinstance(data, dict) else None
    return cards if isinstance(cards, list) else None


def _model_ids(body: bytes) -> frozenset[str] | None:
    cards = model_cards(body)
    if cards is None:
        return None
    return frozenset(c["id"] for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str))


async def check(
    session: aiohttp.ClientSession, base_url: str, health_path: str | None, limit: float
) -> Verdict:
    """One active check of the replica at `base_url` (see the module's docstring)."""
    if health_path is None:
        return Verdict(alive=True, check=CHECK_OFF)
    got = await _get(session, server_root(base_url) + health_path, limit)
    if isinstance(got, str):
        return Verdict(alive=False, check=CHECK_HEALTH, reason=got)
    status = got[0]
    if status in _ABSENT or status in (401, 403):
        # no health endpoint here, or one behind a key (LiteLLM's): the server answered, so
        # the model list decides
        return await _models_instead(session, base_url, limit)
    if not 200 <= status < 300:
        return Verdict(alive=False, check=CHECK_HEALTH, reason=f"status_{status}")
    listed = await _get(session, base_url + "/models", limit)
    if isinstance(listed, str) or listed[0] >= 500:
        return Verdict(alive=None, check=CHECK_HEALTH, keep_models=True)
    models = _model_ids(listed[1]) if 200 <= listed[0] < 300 else None
    return Verdict(alive=True, check=CHECK_HEALTH, models=models)


async def _models_instead(session: aiohttp.ClientSession, base_url: str, limit: float) -> Verdict:
    got = await _get(session, base_url + "/models", limit)
    if isinstance(got, str):
        return Verdict(alive=False, check=CHECK_MODELS, reason=got)
    status, body = got
    if 200 <= status < 300:
        return Verdict(alive=True, check=CHECK_MODELS, models=_model_ids(body))
    if status in _LOCKED:
        return Verdict(alive=True, check=CHECK_MODELS)
    if status in _ABSENT:
        return Verdict(alive=True, check=CHECK_PASSIVE)
    return Verdict(alive=False, check=CHECK_MODELS, reason=f"status_{status}")


def new_session(connections: int = 32) -> aiohttp.ClientSession:
    """The health checker's own client: its connections never compete with requests."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
        auto_decompress=True,
    )


async def close_session(session: aiohttp.ClientSession | None) -> None:
    if session is not None:
        await session.close()
        await asyncio.sleep(0)  # let the connector's transports close
