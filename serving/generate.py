"""Batch generation for offline evals: many chat or text completions against an OpenAI-compatible
endpoint, with bounded concurrency, retries with backoff, and an on-disk cache.

Each `GenerationRequest` carries a cache ``key`` chosen by the caller (the eval runner hashes the
model, the case and the sampling parameters). Finished outputs are appended, one JSON line each,
to the cache file as soon as they arrive, so an interrupted run resumes where it stopped and a
re-run only calls what changed. A line cut short by a crash is ignored when the cache is read.

Retries: connection errors, timeouts, 408, 409, 429 and 5xx are retried with exponential backoff
and full jitter (at most ``retries`` extra attempts); any other 4xx fails the request at once,
since asking again cannot help. A request that fails every attempt yields a result with
``error`` set; the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from serving.upstream import parse_error_body

logger = logging.getLogger(__name__)

__all__ = ["BatchGenerator", "GenerationRequest", "GenerationResult", "OutputCache"]

Endpoint = Literal["chat/completions", "completions"]
_RETRY_STATUS = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One call: the endpoint under the base URL and the JSON body (with ``model``)."""

    key: str
    endpoint: Endpoint
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GenerationResult:
    key: str
    text: str = ""
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    usage: dict[str, int] = field(default_factory=dict)


class OutputCache:
    """Outputs by key, persisted as JSON Lines; only successful outputs are kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._items: dict[str, str] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                if isinstance(item, dict) and isinstance(item.get("key"), str):
                    self._items[item["key"]] = str(item.get("text", ""))

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> str | None:
        return self._items.get(key)

    def put(self, key: str, text: str) -> None:
        self._items[key] = text
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")


def _text_of(endpoint: Endpoint, payload: Any) -> str:
    try:
        choice = payload["choices"][0]
        if endpoint == "chat/completions":
            content = choice["message"]["content"]
            return content if isinstance(content, str) else ""
        return str(choice["text"])
    except (KeyError, IndexError, TypeError):
        raise ValueError("the response has no choices[0] text") from None


class BatchGenerator:
    """Runs `GenerationRequest`s against ``base_url`` (which ends in ``/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        retries: int = 4,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 120.0,
        cache: OutputCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )
        self._sem = asyncio.Semaphore(concurrency)
        self.retries = retries
        self.backoff = backoff_seconds
        self.cache = cache if cache is not None else OutputCache(None)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> BatchGenerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def model_roots(self) -> dict[str, str]:
        """``id -> root`` from ``/models`` (an adapter's root is its path, so a retrained
        adapter loaded under the same name differs); empty when the endpoint cannot say."""
        try:
            resp = await self._client.get("/models")
            cards = resp.json().get("data", []) if resp.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
        return {
            str(c["id"]): str(c.get("root") or "")
            for c in cards
            if isinstance(c, dict) and "id" in c
        }

    async def run(
        self,
        requests: Iterable[GenerationRequest],
        on_result: Callable[[GenerationResult], None] | None = None,
    ) -> dict[str, GenerationResult]:
        """Every request's result by key; cached ones are not sent again."""

        async def one(req: GenerationRequest) -> GenerationResult:
            hit = self.cache.get(req.key)
            if hit is not None:
                result = GenerationResult(req.key, hit, cached=True)
            else:
                async with self._sem:
                    result = await self._call(req)
                if result.error is None:
                    self.cache.put(req.key, result.text)
            if on_result is not None:
                on_result(result)
            return result

        unique = {req.key: req for req in requests}
        results = await asyncio.gather(*(one(req) for req in unique.values()))
        return {r.key: r for r in results}

    async def _call(self, req: GenerationRequest) -> GenerationResult:
        error = "not attempted"
        for attempt in range(1, self.retries + 2):
            retry = True
            try:
                resp = await self._client.post("/" + req.endpoint, json=req.body)
            except httpx.TimeoutException:
                error = "timeout"
            except httpx.HTTPError as exc:
                error = f"connection failed ({exc.__class__.__name__})"
            else:
                if resp.status_code == 200:
                    try:
                        payload = resp.json()
                        if not isinstance(payload, dict):
                            raise ValueError("the response is not a JSON object")
                        usage = payload.get("usage") or {}
                        if not isinstance(usage, dict):
                            usage = {}
                        return GenerationResult(
                            req.key, _text_of(req.endpoint, payload), attempts=attempt,
                            usage={k: int(v) for k, v in usage.items() if isinstance(v, int)},
                        )  # fmt: skip
                    except ValueError as exc:
                        error = f"unusable response: {exc}"
                else:
                    info = parse_error_body(resp.content)
                    detail = info.message if info is not None else resp.text[:200]
                    error = f"HTTP {resp.status_code}: {detail}"
                    retry = resp.status_code >= 500 or resp.status_code in _RETRY_STATUS
            if not retry or attempt > self.retries:
                return GenerationResult(req.key, error=error, attempts=attempt)
            delay = random.uniform(0, self.backoff * 2 ** (attempt - 1))
            logger.debug("retrying %s in %.2f s after %s", req.key, delay, error)
            await asyncio.sleep(delay)
        return GenerationResult(req.key, error=error, attempts=self.retries + 1)
