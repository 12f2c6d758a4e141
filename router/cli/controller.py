"""`abgate controller`: run the decision loop (one leader among any number of processes).

Redis, Prometheus and the controller (with the statistics behind it) are imported when the
command runs, not when `abgate` starts."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("controller")
    def controller(
        tick: Annotated[
            float | None, typer.Option(help="seconds between loops [default: 1]", min=0.05)
        ] = None,
        lock_ttl: Annotated[
            float | None, typer.Option(help="leader lock TTL in seconds [default: 10]", min=0.5)
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option(help="serve /metrics on this port (0: off)", min=0, max=65535)
        ] = None,
    ) -> None:
        """Ramp, promote, roll back and pause running experiments by their policies."""
        raise typer.Exit(run(tick, lock_ttl, metrics_port))


def run(tick: float | None, lock_ttl: float | None, metrics_port: int | None) -> int:
    import asyncio
    import signal

    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry, start_http_server

    from router import logs
    from router.cli.serve import load_settings
    from router.control.controller import Controller
    from router.control.retention import Retention
    from router.errors import ConfigError

    try:
        settings = load_settings(
            controller_tick_seconds=tick,
            controller_lock_ttl_seconds=lock_ttl,
            controller_metrics_port=metrics_port,
        )
    except ConfigError as exc:
        print(f"abgate controller: error: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print("abgate controller: error: set ABGATE_REDIS_URL to the gateways' Redis",
              file=sys.stderr)  # fmt: skip
        return 2
    logs.configure(settings.log_level, settings.log_format)
    registry = CollectorRegistry()
    if settings.controller_metrics_port:
        start_http_server(settings.controller_metrics_port, addr=settings.host, registry=registry)
    redis_url = settings.redis_url

    async def main() -> None:
        client = aioredis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Controller(
                client,
                lock_ttl=settings.controller_lock_ttl_seconds,
                tick=settings.controller_tick_seconds,
                registry=registry,
                retention=Retention(
                    settings.ended_retention_seconds, settings.feedback_window_seconds
                ),
            ).run(stop)
        finally:
            await client.aclose()

    asyncio.run(main())
    return 0
