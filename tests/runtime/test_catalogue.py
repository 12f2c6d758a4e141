"""Catalogue: route aliases first, then the default upstream's models, with the OpenAI card
fields only; cached until expiry or swap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from router.dataplane.routing import RoutingTable, compile_table
from router.experiments import DefaultUpstream
from router.runtime.catalogue import Catalogue
from serving.errors import UpstreamConnectError
from tests.runtime.conftest import experiment

A, B, DEFAULT, DOWN = (f"http://{h}:8000/v1" for h in ("a", "b", "default", "down"))
OPENAI_FIELDS = {"id", "object", "created", "owned_by"}
# What a vLLM server lists for a LoRA adapter: its directory, its base model and more.
LORA_CARD = {
    "id": "support-lora-v2",
    "object": "model",
    "created": 1700000000,
    "owned_by": "vllm",
    "root": "/srv/adapters/support-v2",
    "parent": "base",
    "max_model_len": 4096,
    "permission": [{"id": "modelperm-1", "organization": "*"}],
}

OTHER = {"id": "other", "created": True}  # a `created` of the wrong type


class FakeUpstreams:
    """What each base URL answers to GET /models; counts the calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.served = {
            A: {"object": "list", "data": [{"id": "base"}, {"id": "a-only"}]},
            B: {"object": "list", "data": [{"id": "b-only", "owned_by": "b"}]},
            DEFAULT: {"data": [LORA_CARD, {"id": "route-one"}, OTHER, {"no-id": 1}, "junk"]},
        }

    async def fetch(self, url: str) -> object:
        self.calls[url] += 1
        if url == DOWN:
            raise UpstreamConnectError("refused", base_url=url)
        return self.served[url]


def _table(version: int = 1, default: str | None = DEFAULT) -> RoutingTable:
    exps = [experiment("one", "route-one", A), experiment("two", "route-two", B)]
    exps.append(experiment("three", "route-three", DOWN))
    upstream = DefaultUpstream(base_url=default) if default else None
    return compile_table(version, exps, upstream, ["x-user-id"])


async def test_lists_aliases_then_the_default_upstreams_models_with_openai_fields_only() -> None:
    upstreams, table = FakeUpstreams(), _table()
    models = await Catalogue(lambda: table, upstreams.fetch, 10.0).models()
    ids = [m["id"] for m in models]
    # the arms' own models (base, a-only, b-only) are not listed; route-one is the alias once
    assert ids == ["route-one", "route-two", "route-three", "support-lora-v2", "other"]
    assert all(set(m) == OPENAI_FIELDS for m in models), models
    assert models[0]["owned_by"] == "abgate" and models[0]["object"] == "model"
    lora = models[3]
    assert lora == {"id": "support-lora-v2", "object": "model", "created": 1700000000,
                    "owned_by": "vllm"}  # fmt: skip
    assert isinstance(models[4]["created"], int) and models[4]["created"] is not True
    assert set(upstreams.calls) == {DEFAULT}  # the arms' upstreams are not asked


async def test_no_experiment_name_state_url_or_path_in_the_list() -> None:
    upstreams, table = FakeUpstreams(), _table()
    text = repr(await Catalogue(lambda: table, upstreams.fetch, 10.0).models())
    names = ("'one'", "'two'", "'three'", "-lora'", "'base'")  # experiments, arms' models
    for secret in (*names, "running", "http://", "/srv/adapters", "parent"):
        assert secret not in text, secret


def _const(table: RoutingTable) -> Callable[[], RoutingTable]:
    return lambda: table


async def test_aliases_only_without_a_default_upstream_or_when_it_is_down() -> None:
    upstreams = FakeUpstreams()
    for table in (_table(default=None), _table(default=DOWN)):
        models = await Catalogue(_const(table), upstreams.fetch, 0.0).models()
        assert [m["id"] for m in models] == ["route-one", "route-two", "route-three"]
    assert set(upstreams.calls) == {DOWN}


@pytest.mark.parametrize(
    ("mode", "listed"),
    [
        ("allow", ["base", "one-lora", "shared"]),
        ("refuse_treatment", ["base", "shared"]),  # `shared` is a treatment and a control
        ("refuse", []),
    ],
)
async def test_arm_models_the_data_plane_refuses_are_not_listed(
    mode: str, listed: list[str]
) -> None:
    """What `direct_arm_models` refuses to forward to the default upstream is not offered."""
    exps = [experiment("one", "route-one", A), experiment("two", "route-two", B)]
    exps[1] = exps[1].model_copy(
        update={
            "treatment": exps[1].treatment.model_copy(update={"model": "shared"}),
            "control": exps[1].control.model_copy(update={"model": "shared"}),
        }
    )
    table = compile_table(1, exps, DefaultUpstream(base_url=DEFAULT), ["x-user-id"])
    upstreams = FakeUpstreams()
    upstreams.served[DEFAULT] = {"data": [{"id": "base"}, {"id": "one-lora"}, {"id": "shared"}]}
    models = await Catalogue(_const(table), upstreams.fetch, 0.0, mode).models()
    assert [m["id"] for m in models] == ["route-one", "route-two", *listed]


async def test_caches_until_expiry_or_a_new_table() -> None:
    upstreams = FakeUpstreams()
    current = _table(1)
    catalogue = Catalogue(lambda: current, upstreams.fetch, 10.0)
    first = await catalogue.models()
    assert await catalogue.models() is first
    assert upstreams.calls[DEFAULT] == 1

    current = _table(2)  # a config change: the cached list is not reused
    assert await catalogue.models() is not first
    assert upstreams.calls[DEFAULT] == 2


async def test_no_cache_with_zero_seconds() -> None:
    upstreams, table = FakeUpstreams(), _table()
    catalogue = Catalogue(lambda: table, upstreams.fetch, 0.0)
    await catalogue.models()
    await catalogue.models()
    assert upstreams.calls[DEFAULT] == 2


async def test_unexpected_errors_propagate() -> None:
    async def broken(url: str) -> object:
        raise RuntimeError("bug")

    table = _table()
    with pytest.raises(RuntimeError, match="bug"):
        await Catalogue(lambda: table, broken, 10.0).models()
