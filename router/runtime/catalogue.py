"""The model list of ``GET /v1/models``: the route aliases, then the default upstream's models.

Anyone who reaches the data plane may read it, so it tells what a client may ask for and
nothing else: each card has the OpenAI fields only (`id`, `object`, `created`, `owned_by`). No
experiment names or states, no upstream URLs, and none of the extra fields a model server adds
(vLLM's `root` is a LoRA adapter's directory, `parent` its base model, `max_model_len`...). The
arms' own upstream models are not listed (a client asks for the route alias); what the default
upstream serves is, since a request for it is forwarded there, less the arms' models that
`direct_arm_models` refuses to forward (the treatments' by default, every arm's with `refuse`).
"""

from __future__ import annotations

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
        self,
        table: Callable[[], RoutingTable],
        fetch: FetchModels,
        cache_seconds: float,
        direct_arm_models: str = "allow",
    ) -> None:
        self._table = table
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._direct = direct_arm_models
        self._cache: tuple[float, RoutingTable, list[dict[str, Any]]] | None = None

    async def models(self) -> list[dict[str, Any]]:
        """Route aliases, then the default upstream's models (de-duplicated by id, cached
        briefly)."""
        now = time.monotonic()
        table = self._table()
        cached = self._cache
        if cached is not None and cached[1] is table and now - cached[0] < self._cache_seconds:
            return cached[2]
        created = int(time.time())
        cards = {route: _card(route, created, "abgate") for route in table.routes}
        if table.default_upstream is not None:
            url = table.default_upstream.base_url
            try:
                served = await self._fetch(url)
            except (UpstreamError, orjson.JSONDecodeError) as exc:
                logger.warning("GET /models on the default upstream %s failed: %s", url, exc)
                served = None
            refused = self._refused(table)
            for card in _cards(served):
                if card["id"] not in refused:
                    cards.setdefault(card["id"], _sanitised(card, created))
        models = list(cards.values())
        self._cache = (now, table, models)
        return models

    def _refused(self, table: RoutingTable) -> frozenset[str]:
        """The models the data plane refuses to send to the default upstream (router/dataplane/
        plan.py): not listed, as they cannot be asked for."""
        if self._direct == "refuse":
            return table.arm_models
        if self._direct == "refuse_treatment":
            return table.treatment_models
        return frozenset()


def _cards(served: object) -> list[dict[str, Any]]:
    data = served.get("data") if isinstance(served, dict) else None
    return [
        c
        for c in (data if isinstance(data, list) else [])
        if isinstance(c, dict) and isinstance(c.get("id"), str)
    ]


def _card(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def _sanitised(card: dict[str, Any], created: int) -> dict[str, Any]:
    """An upstream's card with the OpenAI fields only (the server's own `created` and
    `owned_by` when they have the right type)."""
    when = card.get("created")
    owner = card.get("owned_by")
    return _card(
        card["id"],
        when if isinstance(when, int) and not isinstance(when, bool) else created,
        owner if isinstance(owner, str) else "abgate",
    )
