"""The per-request plan: everything one request will do, decided before any upstream I/O.

The body is read and parsed once, and the fields that routing and recording read are checked on
that one parse, so the model server reads what was routed and recorded; the route is looked up
in the immutable routing table; the unit id is hashed to an arm; `model` is rewritten (and usage
asked for on streams) by byte-span edits of the client's body (router/dataplane/body.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from router.dataplane.assignment import assign
from router.dataplane.body import Members, check_members, edit_request, prompt_fingerprint
from router.dataplane.ports import GatewayPort
from router.dataplane.routing import CompiledArm, CompiledExperiment
from router.errors import InvalidRequest, ModelNotFound
from router.http import JsonIntake, Receive, Scope, header_map
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
    members: Members  # the client's body and its top-level members, for a fallback to control
    timeouts: Timeouts | None = None  # None: the pool's defaults
    exp: CompiledExperiment | None = None  # None: the default upstream
    arm: CompiledArm | None = None
    unit: str = ""
    fingerprint: str = ""  # of the prompt, for regeneration detection
    raw: bytes = b""  # the client's body, for capture
    capture: bool = False  # sampled for the flywheel (router/signals/capture.py)
    write_timeout: float = 60.0  # a stream's client that accepts nothing this long is let go


async def build_plan(gw: GatewayPort, scope: Scope, receive: Receive) -> Plan:
    """Read the request and decide where it goes; a `GatewayError` refuses it."""
    headers = header_map(scope["headers"])
    raw = await _INTAKE.read(headers, receive, gw.settings.max_body_bytes)
    req = read_request(raw)
    exp = gw.table.routes.get(req.model)
    if exp is None:
        return _default_plan(gw, req)
    unit = _unit_id(exp, headers, req.data, gw.settings.max_unit_id_bytes)
    arm = exp.arm(assign(exp, unit))
    if arm.arm == "treatment" and gw.breakers.is_open(exp.name, exp.version):
        arm = exp.control  # this gateway instance's circuit breaker is open
    target = arm.target
    return Plan(
        body=edit_request(
            req.members,
            stream=req.stream,
            client_wants_usage=req.wants_usage,
            model_json=arm.model_json,
            has_options=req.has_options,
        ),
        stream=req.stream,
        client_wants_usage=req.wants_usage,
        has_options=req.has_options,
        replicas=gw.replicas.set_for(arm.urls),
        timeouts=arm_timeouts(gw, arm),
        exp=exp,
        arm=arm,
        unit=unit or "",
        route=exp.experiment.route,
        model=target.model,
        api_key=target.api_key,
        fingerprint=prompt_fingerprint(req.data) if exp.regen and unit else "",
        raw=raw,
        members=req.members,
        capture=exp.capture_rate > 0 and random.random() < exp.capture_rate,
    )


@dataclass(slots=True)
class ClientRequest:
    """The fields of a client's body that the gateway acts on, read once, from one parse."""

    data: dict[str, Any]
    members: Members  # where the top-level members are, for the edits
    model: str
    stream: bool
    wants_usage: bool  # `stream_options.include_usage` is true (absent or null: false)
    has_options: bool  # a top-level `stream_options` is there (an object or null)


def read_request(raw: bytes) -> ClientRequest:
    """Parse `raw` and check what routing and recording read: top-level keys unique, `model` a
    non-empty string, `stream` a boolean, `stream_options` an object (each may be null where
    OpenAI's schema allows it, meaning absent), `user` a string. Anything else is a 400."""
    data = _INTAKE.parse(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    members = check_members(raw, data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter (a string)", param="model")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _wrong_type("stream_options", "an object", opts)
    usage = opts.get("include_usage") if opts else None
    if usage is not None and not isinstance(usage, bool):
        raise _wrong_type("stream_options.include_usage", "a boolean", usage)
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _wrong_type("user", "a string", user)
    return ClientRequest(
        data=data,
        members=members,
        model=model,
        stream=stream is True,
        wants_usage=usage is True,
        has_options="stream_options" in data,
    )


def _wrong_type(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"invalid type for `{param}`: expected {expected}, but got {_json_type(value)}",
        param=param,
    )


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _default_plan(gw: GatewayPort, req: ClientRequest) -> Plan:
    """A model that is no route alias goes unchanged to the default upstream, if there is one
    and the model is not an arm's that `direct_arm_models` keeps behind its experiment."""
    table = gw.table
    default = table.default_upstream
    model = req.model
    if default is None:
        raise ModelNotFound(
            f"The model `{model}` does not exist: it is not a route alias of this "
            "gateway and no default upstream is configured.",
            param="model",
        )
    mode = gw.settings.direct_arm_models
    if mode != "allow" and model in (
        table.arm_models if mode == "refuse" else table.treatment_models
    ):
        # worded as for any unknown model: names no experiment, alias or arm
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )
    return Plan(
        body=edit_request(
            req.members,
            stream=req.stream,
            client_wants_usage=req.wants_usage,
            model_json=None,
            has_options=req.has_options,
        ),
        stream=req.stream,
        client_wants_usage=req.wants_usage,
        has_options=req.has_options,
        replicas=gw.replicas.set_for((default.base_url,)),
        route=DEFAULT_ROUTE,
        model=model,
        api_key=default.api_key,
        raw=req.members.raw,
        members=req.members,
    )


def _unit_id(
    exp: CompiledExperiment, headers: dict[bytes, bytes], data: dict[str, Any], limit: int
) -> str | None:
    """The first unit id header present, else the body's `user` (when the experiment reads
    it). A header is read as UTF-8, as `user` is, so one id names one unit either way; an id
    over `limit` bytes (UTF-8) is refused: it would become part of Redis keys."""
    for name in exp.unit_headers:
        value = headers.get(name)
        if value:
            header = name.decode("latin-1")
            if len(value) > limit:
                raise _too_long(f"the `{header}` header", len(value), limit, header)
            try:
                return value.decode()
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"the `{header}` header (a unit id) must be UTF-8", param=header
                ) from None
    if exp.use_body_user:
        user = data.get("user")
        if isinstance(user, str) and user:
            size = len(user) if user.isascii() else len(user.encode())
            if size > limit:
                raise _too_long("`user`", size, limit, "user")
            return user
    return None


def _too_long(where: str, size: int, limit: int, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"the unit id in {where} is {size} bytes long; this gateway accepts unit ids of at "
        f"most {limit} bytes (UTF-8)",
        param=param,
    )


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
