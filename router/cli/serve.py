"""`abgate serve`: run the gateway.

The server stack (uvicorn, the app, the settings) is imported when the command runs, so that the
`abgate` command itself starts fast for every other command.
"""

from __future__ import annotations

import contextlib
import logging
import signal
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
        insecure_admin: Annotated[
            bool, typer.Option(help="serve /admin without ABGATE_ADMIN_TOKEN (local use only)")
        ] = False,
    ) -> None:
        """Run the gateway. Other settings come from ABGATE_* variables (README)."""
        raise typer.Exit(run(config, host, port, insecure_admin))


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


def run_until_signal(server: uvicorn.Server) -> None:
    """Run uvicorn; SIGTERM/SIGINT shut it down gracefully (in-flight requests finish, events
    are flushed) and then return here, so the caller's own clean-up (the embedded Redis) runs.
    uvicorn re-raises the signal it caught after shutting down; the handlers installed here
    absorb it instead of letting it kill the process."""
    received: list[int] = []

    def absorb(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, absorb) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        logger.info("stopped by signal %d", received[0])


def run(config: Path | None, host: str | None, port: int | None, insecure_admin: bool) -> int:
    import uvicorn

    from router import logs
    from router.app import create_app
    from router.errors import ConfigError
    from router.runtime.embedded_redis import EmbeddedRedis, RedisNotFound

    try:
        settings = load_settings(
            config_file=config, host=host, port=port, insecure_admin=insecure_admin or None
        )
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
        run_until_signal(server)
        return 0 if server.started else 1
    return 0  # pragma: no cover
