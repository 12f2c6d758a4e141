"""The app factory: a raw ASGI dispatcher in front of a FastAPI app.

The two completion routes go straight to the `Proxy` (the hot path); everything else (models,
health, metrics, the admin and feedback APIs) is FastAPI. FastAPI's lifespan opens the gateway's
clients in order and closes them in reverse.

Errors reach clients in the OpenAI shape (`router.http.error_body`) with a fresh request id. A
`RedisError` that escapes a route becomes a 503 with a generic message: its text names hosts
and internals, so it goes to the log only.

The OpenAPI document (`/openapi.json`) is an admin route: it needs an admin token. There is no
`/docs` page. With `ABGATE_ADMIN_PORT` set, the process listens on two ports (router/cli/serve.py)
and `GatewayApp` answers each request by the port it arrived on (`scope["server"]`): the admin
API, `/metrics` and `/openapi.json` only on the admin port, the data plane (completions,
`/v1/models`, feedback) only on the other, `/healthz` and `/readyz` on both (the data plane's
`/readyz` without the replicas' URLs); anything else is 404 as an unknown path is.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from router.admin import actions, adapters, audit, experiments, flywheel, reports
from router.admin.deps import ADMIN_AUTH, AdminAuth, warn_about_admin_mode
from router.dataplane.proxy import Proxy
from router.errors import ConfigError, GatewayError, StoreUnavailable
from router.http import Receive, Scope, Send, error_body, new_request_id
from router.runtime.gateway import Gateway
from router.settings import Settings
from router.signals.feedback import build_feedback_router

logger = logging.getLogger(__name__)

PROXY_PATHS = {"/v1/chat/completions": "/chat/completions", "/v1/completions": "/completions"}
STORE_UNAVAILABLE = "the configuration store (Redis) is unavailable; retry later"
ADMIN_ROUTERS = (
    experiments.router,
    actions.router,
    reports.router,
    audit.router,
    adapters.router,
    flywheel.router,
)


# Served only on the admin port when there is one; /docs is on that list although no page is
# served there, so that the data plane answers it as any other unknown path.
ADMIN_PATHS = frozenset({"/metrics", "/openapi.json", "/docs", "/redoc"})
BOTH_PORTS = frozenset({"/healthz", "/readyz"})


def is_admin_path(path: str) -> bool:
    """A path of the admin side (the admin API, metrics, the OpenAPI document)."""
    path = path.rstrip("/") or "/"
    return path in ADMIN_PATHS or path == "/admin" or path.startswith("/admin/")


def on_admin_port(scope: Scope, admin_port: int | None) -> bool:
    server = scope.get("server")
    return admin_port is not None and server is not None and server[1] == admin_port


class GatewayApp:
    """ASGI entrypoint: completions to the proxy, the rest to FastAPI; with an admin port, each
    path only on its own port."""

    def __init__(self, gateway: Gateway, api: FastAPI) -> None:
        self.gateway = gateway
        self.api = api
        self._proxy = Proxy(gateway)
        self._admin_port = gateway.settings.admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._admin_port is not None and not self._on_its_port(scope):
                await _not_found(send)
                return
            if scope["method"] == "POST":
                upstream_path = PROXY_PATHS.get(scope["path"])
                if upstream_path is not None:
                    await self._proxy(scope, receive, send, upstream_path)
                    return
        await self.api(scope, receive, send)

    def _on_its_port(self, scope: Scope) -> bool:
        path = scope["path"]
        if path.rstrip("/") in BOTH_PORTS:
            return True
        return is_admin_path(path) == on_admin_port(scope, self._admin_port)


async def _not_found(send: Send) -> None:
    """What FastAPI answers for an unknown path (so the data plane does not tell that an admin
    API exists elsewhere)."""
    rid = new_request_id()
    body = error_body("Not Found", "invalid_request_error", None, None, rid)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> Response:
    rid = new_request_id()
    return Response(
        content=error_body(message, type_, param, code, rid),
        status_code=status,
        media_type="application/json",
        headers={"x-request-id": rid},
    )


async def _domain_error(_: Request, exc: GatewayError) -> Response:
    response = _json_error(exc.status, exc.message, exc.type, exc.code, exc.param)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _redis_error(request: Request, exc: RedisError) -> Response:
    """503 with a generic message; the exception's text (hosts, ports, internals) is logged."""
    path, kind = request.url.path, type(exc).__name__
    logger.warning("%s %s: Redis error (%s): %s", request.method, path, kind, exc)
    return _json_error(503, STORE_UNAVAILABLE, StoreUnavailable.type, StoreUnavailable.code)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    response = _json_error(exc.status_code, str(exc.detail), "invalid_request_error")
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # Starlette names only the first matching route's methods
        routes = request.app.router.routes
        methods = [
            m
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)
        ]
        if methods:
            response.headers["Allow"] = ", ".join(methods)
    return response


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return _json_error(
        422, f"{where}: {first['msg']}", "invalid_request_error", "invalid_value", where
    )


ERROR_HANDLERS: dict[
    int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]
] = {
    GatewayError: _domain_error,
    RedisError: _redis_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
}


def _add_service_routes(api: FastAPI, gateway: Gateway) -> None:
    """Liveness, readiness, metrics and the model list."""

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Ready once a configuration was loaded. Redis being away degrades, not un-readies:
        the gateway keeps serving its last config and buffers events; replicas being out do
        not either: requests still go to them (docs/operations.md). With an admin port, the
        replicas (their URLs and last errors) are listed on that port only."""
        body = gateway.readiness()
        admin_port = gateway.settings.admin_port
        if admin_port is not None and not on_admin_port(request.scope, admin_port):
            body.pop("replicas", None)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @api.get("/metrics")
    async def metrics() -> Response:
        gateway.metrics.event_queue_depth.set(gateway.writer.depth)
        gateway.health.replica_metrics()  # the replicas' state as of this scrape
        return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": await gateway.models()}

    @api.get("/openapi.json", include_in_schema=False, dependencies=ADMIN_AUTH)
    async def openapi() -> Response:
        """The OpenAPI document, for admins only: it maps the whole admin API."""
        return JSONResponse(api.openapi())


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> GatewayApp:
    if settings.admin_port is not None and settings.admin_port == settings.port:
        raise ConfigError("ABGATE_ADMIN_PORT must differ from ABGATE_PORT")
    gateway = Gateway(settings, registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        # Everything allocated at start-up (modules, settings, compiled tables) lives as long
        # as the process: move it out of the collector's reach, so the rare full collections
        # scan only request-time objects instead of pausing the loop for milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            flywheel.stop_verifier()
            await gateway.close()

    api = FastAPI(
        title="abgate",
        lifespan=lifespan,
        openapi_url=None,  # served by an admin route instead (below)
        docs_url=None,
        redoc_url=None,
        exception_handlers=ERROR_HANDLERS,
    )
    api.state.gateway = gateway  # what the admin routes' `get_gateway` dependency reads
    api.state.admin_auth = AdminAuth(settings)  # what their `require_admin` reads
    _add_service_routes(api, gateway)
    warn_about_admin_mode(settings, api.state.admin_auth)
    for admin_router in ADMIN_ROUTERS:
        api.include_router(admin_router)
    api.include_router(build_feedback_router(gateway))
    return GatewayApp(gateway, api)
