"""What every admin route shares: the bearer-token check, the gateway, the error models and the
path and header parameters, and the one way a route changes an experiment.

Every route needs `Authorization: Bearer $ABGATE_ADMIN_TOKEN` (compared in constant time). A
401 says whether no bearer token came at all (and how to send one) or a wrong one did: telling
the two apart reveals nothing about the token, and they have different fixes.
Changes go through `ConfigStore.update` (one versioned document, audited, published), are
applied on this gateway instance at once, and reach the other gateway instances through pub/sub
and polling. A `RedisError` that escapes a route is answered by the app's handler (503 with a
generic message; the detail goes to the log only).
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request
from pydantic import BaseModel

from router.control.changes import ChangeFn, apply_change
from router.control.evalgate import EvalRecord, load_records
from router.errors import InvalidRequest, NotFound, StoreUnavailable, Unauthorized
from router.experiments import Experiment
from router.runtime.gateway import Gateway
from router.settings import Settings

logger = logging.getLogger(__name__)

MISSING_TOKEN = (
    "missing admin token: send Authorization: Bearer <token> "
    "(abgate CLI: --token or ABGATE_ADMIN_TOKEN)"
)
WRONG_TOKEN = "the admin token is not valid"

ExperimentName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]
IfMatch = Annotated[str | None, Header(pattern=r'^(W/)?"?[0-9]{1,15}"?$')]
Actor = Annotated[str, Header(max_length=200)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed header"),
        (401, "Missing or wrong bearer token (the message says which)"),
        (404, "No such experiment"),
        (409, "Conflicts with the current state"),
        (412, "If-Match names a stale version"),
        (422, "Invalid body or parameters"),
        (503, "Redis unreachable, or the admin API is disabled"),
    )
}


async def get_gateway(request: Request) -> Gateway:
    """The process's gateway, which `create_app` puts on the FastAPI app's state."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def require_admin(
    gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """The dependency every admin router carries: the bearer token, compared in constant time.

    Without a token the API is disabled (503), unless the gateway runs with --insecure-admin.
    """
    settings = gateway.settings
    if settings.admin_token is None:
        if settings.insecure_admin:
            return
        raise StoreUnavailable(
            "the admin API is disabled: start the gateway with ABGATE_ADMIN_TOKEN set"
        )
    token = settings.admin_token.get_secret_value().encode()
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(MISSING_TOKEN)
    if not hmac.compare_digest(given.encode(), token):
        raise Unauthorized(WRONG_TOKEN)


ADMIN_AUTH = [Depends(require_admin)]


def warn_about_admin_mode(settings: Settings) -> None:
    """Say at start-up when the admin API is off or unprotected: both are easy to miss."""
    if settings.admin_token is None and not settings.insecure_admin:
        logger.warning(
            "admin API disabled: ABGATE_ADMIN_TOKEN is not set (use --insecure-admin for a "
            "local setup without a token)"
        )
    elif settings.admin_token is None:
        logger.warning("admin API running WITHOUT authentication (--insecure-admin)")


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    raw = value.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise InvalidRequest('If-Match must carry the experiment\'s version, e.g. "3"')
    return int(raw)


def require_experiment(name: str, exp: Experiment | None) -> Experiment:
    if exp is None:
        raise NotFound(f"no experiment named {name!r}")
    return exp


async def change(
    gateway: Gateway,
    name: str,
    fn: ChangeFn,
    *,
    actor: str,
    action: str,
    reason: str,
    if_match: int | None = None,
) -> Experiment | None:
    """Apply `fn` through the store, then on this gateway instance at once, so that the
    response and the next request here already see the change."""
    doc = await apply_change(
        gateway.store, name, fn, actor=actor, action=action, reason=reason, if_match=if_match
    )
    gateway.apply(doc)
    return doc.experiments.get(name)


async def eval_records(gateway: Gateway, exp: Experiment | None) -> dict[str, EvalRecord]:
    """The registered eval reports the start gate needs: none when `exp` does not require one
    (None: the experiment is not known yet, so read them)."""
    if exp is not None and not exp.requires_eval_report:
        return {}
    return await load_records(gateway.redis)
