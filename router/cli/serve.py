"""`abgate serve`: run the gateway.

The server stack (uvicorn, the app, the settings) is imported when the command runs, so that the
`abgate` command itself starts fast for every other command.

With an admin port (`--admin-port` or `ABGATE_ADMIN_PORT`) one uvicorn server listens on two
sockets of the same host, the data plane's and the admin API's; the app tells them apart by the
local port of each connection (router/app.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import uvicorn

    from router.settings import Settings

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        config: Annotated[
            Path | None, typer.Option(help="YAML file with `experiments:` (and more)")
        ] = None,
        host: Annotated[
            str | None, typer.Option(help="listen address [default: 127.0.0.1]")
        ] = None,
        port: Annotated[int | None, typer.Option(help="listen port [default: 8080]")] = None,
        admin_port: Annotated[
            int | None,
            typer.Option(
                help="serve /admin, /metrics and /openapi.json on this port only "
                "[default: on the listen port]"
            ),
        ] = None,
        insecure_admin: Annotated[
            bool, typer.Option(help="serve /admin without ABGATE_ADMIN_TOKEN (local use only)")
        ] = False,
    ) -> None:
        """Run the gateway. Other settings come from ABGATE_* variables (README)."""
        raise typer.Exit(run(config, host, port, insecure_admin, admin_port))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags on top; errors name the variable."""
    from pydantic import ValidationError

    from router.errors import ConfigError
    from router.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"ABGATE_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # the gateway reads no client address; saves a middleware per call
        log_config=None,
        timeout_graceful_shutdown=30,
    )


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn to serve on, as uvicorn binds one (IPv6 when `host` is an
    IPv6 address). IPPROTO_TCP is spelled out: asyncio sets TCP_NODELAY on the connections of
    a socket only when it names it, and without it small answers wait for delayed ACKs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_until_signal(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    """Run uvicorn; SIGTERM/SIGINT shut it down gracefully (in-flight requests finish, events
    are flushed) and then return here, so the caller's own clean-up (the embedded Redis) runs.
    uvicorn re-raises the signal it caught after shutting down; the handlers installed here
    absorb it instead of letting it kill the process."""
    received: list[int] = []

    def absorb(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, absorb) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=sockets)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        logger.info("stopped by signal %d", received[0])


def run(
    config: Path | None,
    host: str | None,
    port: int | None,
    insecure_admin: bool,
    admin_port: int | None = None,
) -> int:
    import uvicorn

    from router import logs
    from router.app import create_app
    from router.errors import ConfigError
    from router.runtime.embedded_redis import EmbeddedRedis, RedisNotFound

    try:
        settings = load_settings(
            config_file=config, host=host, port=port, insecure_admin=insecure_admin or None,
            admin_port=admin_port,
        )  # fmt: skip
    except ConfigError as exc:
        print(f"abgate serve: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            try:
                embedded = stack.enter_context(EmbeddedRedis(appendonly=True))
            except (RedisNotFound, RuntimeError) as exc:
                print(f"abgate serve: error: {exc}", file=sys.stderr)
                return 2
            logger.warning(
                "ABGATE_REDIS_URL is unset: using a private redis-server on port %d whose data "
                "is deleted on exit; set ABGATE_REDIS_URL in production",
                embedded.port,
            )
            settings = settings.model_copy(update={"redis_url": embedded.url})
        try:
            app = create_app(settings)
        except ConfigError as exc:
            print(f"abgate serve: error: {exc}", file=sys.stderr)
            return 2
        server = uvicorn.Server(uvicorn_config(app, settings.host, settings.port))
        sockets = None
        if settings.admin_port is not None:
            try:
                sockets = [
                    stack.enter_context(listen(settings.host, p))
                    for p in (settings.port, settings.admin_port)
                ]
            except OSError as exc:
                print(f"abgate serve: error: cannot listen: {exc}", file=sys.stderr)
                return 2
            logger.info(
                "data plane on %s:%d, admin API on port %d",
                settings.host, settings.port, settings.admin_port,
            )  # fmt: skip
        run_until_signal(server, sockets)
        return 0 if server.started else 1
    return 0  # pragma: no cover
