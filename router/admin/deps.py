"""What every admin route shares: the bearer-token check, the gateway, the error models and the
path and header parameters, and the one way a route changes an experiment.

Every route needs `Authorization: Bearer <token>` with one of the gateway's admin tokens: the
named ones of `ABGATE_ADMIN_TOKENS` (`name:token,...`) and `ABGATE_ADMIN_TOKEN` (named `admin`).
The token's name is the call's actor in the audit log; no header can set it. The given token is
compared in constant time with every accepted one (SHA-256 digests of both, so neither the
content nor the length of a token shows in the timing). A 401 says whether no bearer token came
at all (and how to send one) or a wrong one did: telling the two apart reveals nothing about the
tokens, and they have different fixes.
Changes go through `ConfigStore.update` (one versioned document, audited, published), are
applied on this gateway instance at once, and reach the other gateway instances through pub/sub
and polling. A `RedisError` that escapes a route is answered by the app's handler (503 with a
generic message; the detail goes to the log only). Experiments leave the admin API with their
targets' `api_key` masked (router/secrets.py).
"""

from __future__ import annotations

import hashlib
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
from router.secrets import keep_api_keys, mask_experiment
from router.settings import Settings

logger = logging.getLogger(__name__)

MISSING_TOKEN = (
    "missing admin token: send Authorization: Bearer <token> "
    "(abgate CLI: --token or ABGATE_ADMIN_TOKEN)"
)
DISABLED = "the admin API is disabled: start the gateway with ABGATE_ADMIN_TOKEN(S) set"
INSECURE_ACTOR = "anonymous"  # the actor of a change made through --insecure-admin
SHORT_TOKEN = 16
WRONG_TOKEN = "the admin token is not valid"

ExperimentName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]
IfMatch = Annotated[str | None, Header(pattern=r'^(W/)?"?[0-9]{1,15}"?$')]


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


class AdminAuth:
    """The accepted admin tokens by actor name, as SHA-256 digests (built once, at start-up)."""

    def __init__(self, settings: Settings) -> None:
        credentials = settings.admin_credentials()
        self._digests = [(name, _digest(token.encode())) for name, token in credentials.items()]
        self.insecure = not credentials and settings.insecure_admin
        self.short = sorted(n for n, t in credentials.items() if len(t) < SHORT_TOKEN)

    def actor(self, authorization: str | None) -> str:
        """The name of the token `authorization` carries; Unauthorized (401) otherwise."""
        if not self._digests:
            if self.insecure:
                return INSECURE_ACTOR
            raise StoreUnavailable(DISABLED)
        scheme, _, given = (authorization or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized(MISSING_TOKEN)
        digest = _digest(given.encode())
        actor = None
        for name, expected in self._digests:  # every one, whichever matches
            if hmac.compare_digest(digest, expected) and actor is None:
                actor = name
        if actor is None:
            raise Unauthorized(WRONG_TOKEN)
        return actor


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


async def require_admin(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The dependency every admin router carries: the calling token's name (the actor).

    Without any token configured the API is disabled (503), unless the gateway runs with
    --insecure-admin (actor `anonymous`)."""
    auth: AdminAuth = request.app.state.admin_auth
    return auth.actor(authorization)


ADMIN_AUTH = [Depends(require_admin)]
# The audit actor of a change: the name of the token it came with (FastAPI runs
# `require_admin` once per request, for the router and for this parameter).
AdminActor = Annotated[str, Depends(require_admin)]


def warn_about_admin_mode(settings: Settings, auth: AdminAuth) -> None:
    """Say at start-up when the admin API is off, unprotected, or has short tokens."""
    if not settings.admin_credentials() and not settings.insecure_admin:
        logger.warning(
            "admin API disabled: neither ABGATE_ADMIN_TOKEN nor ABGATE_ADMIN_TOKENS is set "
            "(use --insecure-admin for a local setup without a token)"
        )
    elif auth.insecure:
        logger.warning("admin API running WITHOUT authentication (--insecure-admin)")
    if auth.short:
        logger.warning(
            "admin token(s) %s shorter than %d characters: use long random tokens "
            "(openssl rand -hex 32)",
            ", ".join(auth.short),
            SHORT_TOKEN,
        )


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
    response and the next request here already see the change.

    A target of the result whose `api_key` is "set" keeps its stored key (router/secrets.py).
    Returns the experiment as the API shows it: keys masked."""

    def keeping_keys(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment | None:
        return keep_api_keys(fn(current, exps), current)

    doc = await apply_change(
        gateway.store, name, keeping_keys, actor=actor, action=action, reason=reason,
        if_match=if_match,
    )  # fmt: skip
    gateway.apply(doc)
    exp = doc.experiments.get(name)
    return mask_experiment(exp) if exp is not None else None


async def eval_records(gateway: Gateway, exp: Experiment | None) -> dict[str, EvalRecord]:
    """The registered eval reports the start gate needs: none when `exp` does not require one
    (None: the experiment is not known yet, so read them)."""
    if exp is not None and not exp.requires_eval_report:
        return {}
    return await load_records(gateway.redis)
