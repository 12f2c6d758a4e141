"""The model list of ``GET /v1/models``: the route aliases, then what the upstreams serve."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from router.dataplane.routing import RoutingTable
from serving.errors import UpstreamError

logger = logging.getLogger(__name__)

FetchModels = Callable[[str], Awaitable[object]]  # base URL -> the JSON of its GET /models


class Catalogue:
    """Builds the model list and keeps it for `cache_seconds`, or until the table is swapped."""

    def __init__(
        self, table: Callable[[], RoutingTable], fetch: FetchModels, cache_seconds: float
    ) -> None:
        self._table = table
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._cache: tuple[float, RoutingTable, list[dict[str, Any]]] | None = None

    async def models(self) -> list[dict[str, Any]]:
        """Route aliases, then what the upstreams serve (de-duplicated by id, cached briefly)."""
        now = time.monotonic()
        table = self._table()
        cached = self._cache
        if cached is not None and cached[1] is table and now - cached[0] < self._cache_seconds:
            return cached[2]
        cards = _alias_cards(table)
        urls = sorted(
            {u for e in table.routes.values() for u in (*e.control.urls, *e.treatment.urls)}
            | ({table.default_upstream.base_url} if table.default_upstream is not None else set())
        )
        results = await asyncio.gather(*(self._fetch(u) for u in urls), return_exceptions=True)
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, UpstreamError | orjson.JSONDecodeError):
                logger.warning("GET /models on %s failed: %s", url, result)
                continue
            if isinstance(result, BaseException):
                raise result
            data = result.get("data") if isinstance(result, dict) else None
            for card in data if isinstance(data, list) else []:
                if isinstance(card, dict) and isinstance(card.get("id"), str):
                    cards.setdefault(card["id"], card)
        models = list(cards.values())
        self._cache = (now, table, models)
        return models


def _alias_cards(table: RoutingTable) -> dict[str, dict[str, Any]]:
    """One model card per route alias; an upstream model of the same id is not listed again."""
    created = int(time.time())
    return {
        route: {
            "id": route,
            "object": "model",
            "created": created,
            "owned_by": "abgate",
            "root": None,
            "parent": None,
            "abgate": {"experiment": exp.experiment.name, "state": exp.experiment.state},
        }
        for route, exp in table.routes.items()
    }
