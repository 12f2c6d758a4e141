"""The per-request plan: everything one request will do, decided before any upstream I/O.

The body is read and parsed once; the route is looked up in the immutable routing table; the
unit id is hashed to an arm; `model` is rewritten (and usage asked for on streams) by byte-span
edits of the client's body (router/dataplane/body.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from router.dataplane.assignment import assign
from router.dataplane.body import edit_request, prompt_fingerprint
from router.dataplane.ports import GatewayPort
from router.dataplane.routing import CompiledArm, CompiledExperiment
from router.errors import InvalidRequest, ModelNotFound
from router.http import JsonIntake, Receive, Scope
from serving.pool import ReplicaSet
from serving.types import Timeouts

DEFAULT_ROUTE = "_default"

_INTAKE = JsonIntake(
    noun="request body",
    media_type_message=(
        "the request body must be JSON sent with Content-Type: application/json; got {got}"
    ),
    name_declared_size=True,
)


@dataclass(slots=True, kw_only=True)
class Plan:
    """What one request will do."""

    body: bytes  # what is sent upstream
    stream: bool
    client_wants_usage: bool  # the client asked for the usage chunk of a stream itself
    has_options: bool  # the client's body has a top-level `stream_options`
    replicas: ReplicaSet
    route: str
    model: str  # the upstream model
    api_key: str | None
    timeouts: Timeouts | None = None  # None: the pool's defaults
    exp: CompiledExperiment | None = None  # None: the default upstream
    arm: CompiledArm | None = None
    unit: str = ""
    fingerprint: str = ""  # of the prompt, for regeneration detection
    raw: bytes = b""  # the client's body, for a fallback to control and for capture
    capture: bool = False  # sampled for the flywheel (router/signals/capture.py)
    write_timeout: float = 60.0  # a stream's client that accepts nothing this long is let go


async def build_plan(gw: GatewayPort, scope: Scope, receive: Receive) -> Plan:
    """Read the request and decide where it goes; a `GatewayError` refuses it."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    raw = await _INTAKE.read(headers, receive, gw.settings.max_body_bytes)
    data = _INTAKE.parse(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter (a string)", param="model")
    stream = data.get("stream") is True
    opts = data.get("stream_options")
    wants_usage = isinstance(opts, dict) and bool(opts.get("include_usage", True))
    has_options = "stream_options" in data
    exp = gw.table.routes.get(model)
    if exp is None:
        return _default_plan(gw, raw, model, stream, wants_usage, has_options)
    unit = _unit_id(exp, headers, data)
    arm = exp.arm(assign(exp, unit))
    if arm.arm == "treatment" and gw.breakers.is_open(exp.name, exp.version):
        arm = exp.control  # this gateway instance's circuit breaker is open
    target = arm.target
    return Plan(
        body=edit_request(
            raw,
            stream=stream,
            client_wants_usage=wants_usage,
            model_json=arm.model_json,
            has_options=has_options,
            alias=exp.alias_json,
        ),
        stream=stream,
        client_wants_usage=wants_usage,
        has_options=has_options,
        replicas=gw.replicas.set_for(arm.urls),
        timeouts=arm_timeouts(gw, arm),
        exp=exp,
        arm=arm,
        unit=unit or "",
        route=exp.experiment.route,
        model=target.model,
        api_key=target.api_key,
        fingerprint=prompt_fingerprint(data) if exp.regen and unit else "",
        raw=raw,
        capture=exp.capture_rate > 0 and random.random() < exp.capture_rate,
    )


def _default_plan(
    gw: GatewayPort,
    raw: bytes,
    model: str,
    stream: bool,
    wants_usage: bool,
    has_options: bool,
) -> Plan:
    """A model that is no route alias goes unchanged to the default upstream, if there is one."""
    default = gw.table.default_upstream
    if default is None:
        raise ModelNotFound(
            f"The model `{model}` does not exist: it is not a route alias of this "
            "gateway and no default upstream is configured.",
            param="model",
        )
    return Plan(
        body=edit_request(
            raw,
            stream=stream,
            client_wants_usage=wants_usage,
            model_json=None,
            has_options=has_options,
        ),
        stream=stream,
        client_wants_usage=wants_usage,
        has_options=has_options,
        replicas=gw.replicas.set_for((default.base_url,)),
        route=DEFAULT_ROUTE,
        model=model,
        api_key=default.api_key,
    )


def _unit_id(
    exp: CompiledExperiment, headers: dict[bytes, bytes], data: dict[str, Any]
) -> str | None:
    for name in exp.unit_headers:
        value = headers.get(name)
        if value:
            return value.decode("latin-1")
    if exp.use_body_user:
        user = data.get("user")
        if isinstance(user, str) and user:
            return user
    return None


def arm_timeouts(gw: GatewayPort, arm: CompiledArm) -> Timeouts | None:
    """The arm's target's own timeouts, each falling back to the pool's default; None when
    the target sets none."""
    target = arm.target
    if target.connect_timeout is None and target.read_timeout is None:
        return None
    base = gw.pool.get(arm.urls[0]).timeouts
    return Timeouts(
        connect=target.connect_timeout or base.connect,
        read=target.read_timeout or base.read,
    )
