"""Catalogue: route aliases first, upstream models de-duplicated, cached until expiry or swap."""

from __future__ import annotations

from collections import Counter

import pytest

from router.dataplane.routing import RoutingTable, compile_table
from router.experiments import DefaultUpstream
from router.runtime.catalogue import Catalogue
from serving.errors import UpstreamConnectError
from tests.runtime.conftest import experiment

A, B, DEFAULT, DOWN = (f"http://{h}:8000/v1" for h in ("a", "b", "default", "down"))


class FakeUpstreams:
    """What each base URL answers to GET /models; counts the calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.served = {
            A: {"object": "list", "data": [{"id": "base", "object": "model"}, {"id": "route-one"}]},
            B: {"object": "list", "data": [{"id": "base", "owned_by": "b"}, {"id": "b-only"}]},
            DEFAULT: {"data": [{"id": "other"}, {"no-id": 1}, "junk"]},
        }

    async def fetch(self, url: str) -> object:
        self.calls[url] += 1
        if url == DOWN:
            raise UpstreamConnectError("refused", base_url=url)
        return self.served[url]


def _table(version: int = 1) -> RoutingTable:
    exps = [experiment("one", "route-one", A), experiment("two", "route-two", B)]
    exps.append(experiment("three", "route-three", DOWN))
    return compile_table(version, exps, DefaultUpstream(base_url=DEFAULT), ["x-user-id"])


async def test_lists_aliases_then_upstream_models_once_each() -> None:
    upstreams, table = FakeUpstreams(), _table()
    models = await Catalogue(lambda: table, upstreams.fetch, 10.0).models()
    ids = [m["id"] for m in models]
    assert ids == ["route-one", "route-two", "route-three", "base", "b-only", "other"]
    alias = models[0]
    assert alias["owned_by"] == "abgate" and alias["object"] == "model"
    assert alias["abgate"] == {"experiment": "one", "state": "running"}
    assert models[3] == {"id": "base", "object": "model"}  # the first upstream (sorted URL) wins
    assert set(upstreams.calls) == {A, B, DEFAULT, DOWN}  # DOWN failed and was skipped


async def test_caches_until_expiry_or_a_new_table() -> None:
    upstreams = FakeUpstreams()
    current = _table(1)
    catalogue = Catalogue(lambda: current, upstreams.fetch, 10.0)
    first = await catalogue.models()
    assert await catalogue.models() is first
    assert upstreams.calls[A] == 1

    current = _table(2)  # a config change: the cached list is not reused
    assert await catalogue.models() is not first
    assert upstreams.calls[A] == 2


async def test_no_cache_with_zero_seconds() -> None:
    upstreams, table = FakeUpstreams(), _table()
    catalogue = Catalogue(lambda: table, upstreams.fetch, 0.0)
    await catalogue.models()
    await catalogue.models()
    assert upstreams.calls[A] == 2


async def test_unexpected_errors_propagate() -> None:
    async def broken(url: str) -> object:
        raise RuntimeError("bug")

    table = _table()
    with pytest.raises(RuntimeError, match="bug"):
        await Catalogue(lambda: table, broken, 10.0).models()
