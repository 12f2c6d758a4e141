"""Admin routes for LoRA adapters and the hot swap of a running experiment's treatment.

`GET|POST /admin/adapters`, `DELETE /admin/adapters/{name}`,
`POST /admin/experiments/{name}/swap`. Same bearer token as the rest of the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from router.admin.deps import (
    ADMIN_AUTH,
    ADMIN_ERRORS,
    AdminActor,
    ExperimentName,
    GatewayDep,
    change,
    eval_records,
    require_experiment,
)
from router.control.adapters import AdapterError, AdapterRecord
from router.control.discovery import discover
from router.control.evalgate import check_start
from router.control.lifecycle import bump
from router.errors import Conflict, GatewayError, NotFound, Unprocessable
from router.experiments import LIVE_STATES, Experiment
from router.runtime.gateway import Gateway

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/admin", tags=["adapters"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS
)

AdapterName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
]

# Unloads that run after a swap answered; held here so the event loop's weak references to the
# tasks are not the only ones.
_retiring: set[asyncio.Task[None]] = set()


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Immutable per version, e.g. support-lora-v3",
    )
    path: str = Field(min_length=1, max_length=2000, description="lora_path on the replicas")
    base_urls: list[str] | None = Field(
        default=None, min_length=1, description="Replicas to load it on (default: experiment's)"
    )
    experiment: str | None = Field(
        default=None, description="Load it on every replica of this experiment's treatment"
    )
    base_model: str | None = None


class AdapterOut(BaseModel):
    name: str
    path: str
    base_model: str | None
    urls: list[str]
    state: str
    replicas: dict[str, dict[str, Any]]
    created_at: float
    origin: str = Field(
        description="admin: loaded through this API; server_start: the model server loaded it "
        "at its start (vLLM's --lora-modules), found in its /v1/models"
    )


class AdapterList(BaseModel):
    adapters: list[AdapterOut]


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    treatment_model: str = Field(min_length=1, max_length=200)
    unload_old: bool = Field(default=False, description="Unload the old adapter once drained")
    drain_seconds: float = Field(default=30.0, ge=0, le=3600)
    reason: str = Field(default="", max_length=1000)


def _out(record: AdapterRecord) -> AdapterOut:
    return AdapterOut(
        name=record.name,
        path=record.path,
        base_model=record.base_model,
        urls=record.urls,
        state=record.state,
        created_at=record.created_at,
        origin=record.origin,
        replicas={u: s.model_dump() for u, s in record.replicas.items()},
    )


def _refuse(exc: AdapterError) -> GatewayError:
    if exc.status == 404:
        return NotFound(exc.message)
    if exc.status == 422:
        return Unprocessable(exc.message)
    return Conflict(exc.message)


def _in_use(gateway: Gateway, name: str) -> list[str]:
    """The experiments whose requests go, or may go, to adapter `name`: a live one (draft,
    running, paused) through either arm; a final one while it still holds its route (no live
    experiment replaced it): a promoted one through its treatment, a rolled-back one through its
    control (router/dataplane/routing.py)."""
    routes = gateway.table.routes
    users: list[str] = []
    for e in gateway.table.experiments.values():
        if e.state in LIVE_STATES:
            models: tuple[str, ...] = (e.treatment.model, e.control.model)
        elif (held := routes.get(e.route)) is not None and held.name == e.name:
            models = (e.treatment.model,) if e.state == "promoted" else (e.control.model,)
        else:
            models = ()
        if name in models:
            users.append(e.name)
    return users


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(gateway: GatewayDep) -> AdapterList:
    """Every adapter in the registry, including those the healthy replicas list in their
    /v1/models without the registry having loaded them (loaded at the server's start)."""
    await discover(gateway.adapters)
    return AdapterList(adapters=[_out(r) for r in await gateway.adapters.all()])


@router.post("/adapters", response_model=AdapterOut, status_code=201)
async def load_adapter(body: LoadRequest, gateway: GatewayDep) -> AdapterOut:
    """Load on every replica, probe each; `state` is `ready` only if all answered."""
    urls = list(body.base_urls or [])
    if body.experiment is not None:
        exp = gateway.table.experiments.get(body.experiment)
        if exp is None:
            raise NotFound(f"no experiment named {body.experiment!r}", param="experiment")
        urls += list(exp.treatment.urls)
    if not urls:
        raise Unprocessable(
            "give base_urls or an experiment whose replicas to use", param="base_urls"
        )
    try:
        record = await gateway.adapters.load(body.name, body.path, urls, body.base_model)
    except AdapterError as exc:
        raise _refuse(exc) from exc
    return _out(record)


@router.delete("/adapters/{name}", response_model=AdapterOut)
async def unload_adapter(
    name: AdapterName,
    gateway: GatewayDep,
    drain_seconds: Annotated[float, Query(ge=0, le=3600)] = 30.0,
) -> AdapterOut:
    """Stop using it (refused while an experiment routes to it), drain, unload everywhere."""
    users = _in_use(gateway, name)
    if users:
        raise Conflict(f"adapter {name!r} is in use by {', '.join(users)}; swap it first")
    try:
        return _out(await gateway.adapters.unload(name, gateway.in_flight, drain_seconds))
    except AdapterError as exc:
        raise _refuse(exc) from exc


@router.post("/experiments/{name}/swap", response_model=Experiment)
async def swap(
    name: ExperimentName,
    body: SwapRequest,
    gateway: GatewayDep,
    actor: AdminActor,
) -> Experiment:
    """Repoint the treatment to a new adapter that is ready on every replica, atomically
    (versioned and audited); then drain and optionally unload the old one."""
    exp = require_experiment(name, gateway.table.experiments.get(name))
    new = body.treatment_model
    await discover(gateway.adapters, exp.treatment.urls)  # adapters loaded at a server's start
    await _require_ready(gateway, new, exp.treatment.urls)
    old = exp.treatment.model
    if body.unload_old and await gateway.adapters.get(old) is None:
        raise Conflict(
            f"cannot unload {old!r}: it is not a LoRA adapter of the treatment's replicas (the "
            "registry does not know it and no replica lists it with a parent model in "
            "/v1/models); swap without unload_old",
            param="unload_old",
        )
    records = await eval_records(gateway, exp)

    def repoint(current: Experiment | None, _: dict[str, Experiment]) -> Experiment:
        now = require_experiment(name, current)
        if now.state not in ("draft", "running", "paused"):
            raise Conflict(f"experiment {name!r} is {now.state}")
        if now.treatment.model == new:
            raise Conflict(f"the treatment already uses {new!r}")
        swapped = bump(now, treatment=now.treatment.model_copy(update={"model": new}))
        if swapped.state in ("running", "paused"):
            check_start(swapped, records)  # the new adapter needs its own passing report
        return swapped

    reason = body.reason or f"{old} -> {new}"
    swapped = require_experiment(
        name,
        await change(gateway, name, repoint, actor=actor, action="swap", reason=reason),
    )
    if body.unload_old and not _in_use(gateway, old):
        task = asyncio.create_task(_retire(gateway, old, body.drain_seconds, exp.treatment.urls))
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)
    return swapped


async def _require_ready(gateway: Gateway, adapter: str, urls: tuple[str, ...]) -> None:
    """Refuse a swap to an adapter that is unknown or not ready on every one of `urls`."""
    record = await gateway.adapters.get(adapter)
    if record is None:
        raise NotFound(f"no adapter named {adapter!r}; load it first", param="treatment_model")
    if not record.ready_on(urls):
        states = {
            u: record.replicas[u].state if u in record.replicas else "not loaded" for u in urls
        }
        raise Conflict(
            f"adapter {adapter!r} is not ready on every replica of the treatment: {states}",
            param="treatment_model",
        )


async def _retire(
    gateway: Gateway, model: str, drain_seconds: float, treatment: tuple[str, ...]
) -> None:
    """Unload the swapped-out adapter: from every replica of its record if the admin API loaded
    it; one a server loaded at its start only from the experiment's treatment replicas (other
    replicas that list it, such as a default upstream serving it to direct clients, keep it)."""
    try:
        record = await gateway.adapters.get(model)
        if record is not None:
            only = treatment if record.origin == "server_start" else None
            await gateway.adapters.unload(model, gateway.in_flight, drain_seconds, only)
    except (AdapterError, RedisError) as exc:
        logger.warning("could not unload %s after the swap: %s", model, exc)
