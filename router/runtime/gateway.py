"""The gateway's runtime state and its lifecycle: clients opened in order, closed in reverse.

`Gateway` holds what the request path reads (`table`, `pool`, `replicas`, `writer`, `metrics`,
`breakers`) and owns the services that run beside it: the config follower (the routing table),
the health service (replica checks, in-flight counts, adapter reconciliation), the model
catalogue and the circuit breakers' rollbacks. The services report their Redis calls to one
`RedisState`, which `/readyz` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router.control.adapters import AdapterManager
from router.control.retention import Retention
from router.control.store import ConfigDoc, ConfigStore
from router.dataplane.breaker import Breakers
from router.dataplane.routing import CompiledExperiment, RoutingTable
from router.errors import ConfigError
from router.experiments import ConfigFile
from router.metrics import GatewayMetrics
from router.runtime.catalogue import Catalogue
from router.runtime.config_file import load_config_file
from router.runtime.config_follower import ConfigFollower
from router.runtime.health import HealthService
from router.runtime.redis_state import RedisState
from router.runtime.rollback import BreakerRollback
from router.settings import Settings
from router.signals.capture import CaptureWriter, RawCapture
from router.signals.events import EventWriter
from serving.pool import OutlierPolicy, ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool

__all__ = ["Gateway", "load_config_file"]

logger = logging.getLogger(__name__)


class Gateway:
    """Runtime state of one gateway instance."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        if settings.redis_url is None:
            raise ConfigError("ABGATE_REDIS_URL is not set (the CLI starts a private Redis)")
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.file_config = (
            load_config_file(settings.config_file) if settings.config_file else ConfigFile()
        )
        self.redis: aioredis.Redis = aioredis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.store = ConfigStore(
            self.redis,
            Retention(settings.ended_retention_seconds, settings.feedback_window_seconds),
        )
        self.pool = UpstreamPool(
            timeouts=Timeouts(
                connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout
            ),
            max_connections=settings.upstream_max_connections,
            pool_timeout=settings.upstream_pool_timeout,
            max_body_bytes=settings.upstream_max_response_bytes,
        )
        self.replicas = ReplicaPool(
            self.pool,
            OutlierPolicy(
                max_failures=settings.outlier_max_failures,
                base_ejection_seconds=settings.outlier_ejection_seconds,
            ),
        )
        self.redis_state = RedisState(self.metrics)
        self.writer = EventWriter(
            self.redis,
            self.metrics,
            capacity=settings.event_buffer,
            capacity_bytes=settings.event_buffer_bytes,
            batch=settings.event_batch,
            stream_maxlen=settings.event_stream_maxlen,
            minute_retention_seconds=settings.minute_retention_seconds,
            max_units_per_arm=settings.max_units_per_arm,
            linger_seconds=settings.event_linger_seconds,
            on_redis=self.redis_state.report("events"),
        )
        self.adapters = AdapterManager(self.redis, self.replicas)
        self.capture = CaptureWriter(self.redis, self.registry)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.model_inflight: Counter[str] = Counter()  # requests running, by upstream model
        self.breakers = Breakers()
        self.inflight: set[str] = set()  # request ids whose event is not submitted yet
        self.config = ConfigFollower(
            settings, self.file_config, self.store, self.redis, self.replicas, self.breakers,
            self.metrics, self.redis_state,
        )  # fmt: skip
        self.health = HealthService(
            settings, self.redis, self.replicas, self.adapters, self.metrics, self.identity,
            self.model_inflight, self.redis_state,
        )  # fmt: skip
        self.catalogue = Catalogue(
            lambda: self.config.table,
            lambda url: self.pool.get(url).get_json("/models"),
            settings.models_cache_seconds,
            settings.direct_arm_models,
        )
        self.rollbacks = BreakerRollback(self.store, self.metrics, self.config.apply)
        self._loops: list[asyncio.Task[None]] = []

    @property
    def table(self) -> RoutingTable:
        """The routing table of the configuration applied last (read on every request)."""
        return self.config.table

    @property
    def config_loaded(self) -> bool:
        return self.config.loaded

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.config.load_initial()
        self.writer.start()
        self.capture.start()
        self._loops = [
            asyncio.create_task(self.config.watch(), name="abgate-config-watch"),
            asyncio.create_task(self.health.run(), name="abgate-health"),
        ]
        logger.info("gateway started; config version %d", self.table.version)

    async def close(self) -> None:
        self.rollbacks.cancel()
        for loop_task in self._loops:
            # Python 3.11's asyncio.wait_for (redis-py sends every command through it) can
            # swallow a cancellation that races with the command finishing, and the loop runs
            # on: cancel until the task is really done, or shutdown would wait forever.
            while not loop_task.done():
                loop_task.cancel()
                await asyncio.wait({loop_task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        await self.writer.close(self.settings.shutdown_flush_seconds)
        await self.capture.close(self.settings.shutdown_flush_seconds)
        await self.replicas.close()
        await self.pool.close()
        await self.redis.aclose()
        logger.info("gateway stopped")

    # -- services ----------------------------------------------------------------------------

    def apply(self, doc: ConfigDoc) -> None:
        """Compile `doc` and swap it in (after an admin change, before the watcher sees it)."""
        self.config.apply(doc)

    async def refresh(self) -> None:
        """Reload the stored document if its version moved."""
        await self.config.refresh()

    async def models(self) -> list[dict[str, Any]]:
        """The model list of ``GET /v1/models``."""
        return await self.catalogue.models()

    async def in_flight(self, model: str) -> int:
        """Requests using `model` right now, on every gateway instance."""
        return await self.health.in_flight(model)

    async def on_health_tick(self) -> None:
        await self.health.tick()

    def readiness(self) -> dict[str, Any]:
        """What `/readyz` reports: the configuration, Redis's state as the background services
        last found it, the event queue, and each model-server replica's health."""
        return {
            "ready": self.config_loaded,
            "config_version": self.table.version,
            "redis": "ok" if self.redis_state.ok else "unreachable",
            "event_queue_depth": self.writer.depth,
            "replicas": self.replicas.states(),
        }

    def trip(self, name: str, reason: str) -> None:
        """A circuit breaker opened: this gateway instance already serves control; roll the
        experiment back in the store so that every instance does (audited)."""
        self.rollbacks.trip(name, reason)

    def capture_request(
        self,
        exp: CompiledExperiment,
        arm: str,
        model: str,
        rid: str,
        request: bytes,
        response: list[bytes],
        stream: bool,
    ) -> None:
        """Hand a sampled exchange to the capture writer (parsed and redacted off the hot
        path)."""
        capture, redactor = exp.experiment.capture, exp.redactor
        if capture is None or redactor is None:
            return
        self.capture.submit(
            RawCapture(
                request_id=rid, ts=time.time(), experiment=exp.name, route=exp.experiment.route,
                arm=arm, model=model, request=request, response=b"".join(response),
                stream=stream, redactor=redactor, max_items=capture.max_items,
                ttl_seconds=max(1, math.ceil(capture.retention_days * 86400)),
            )
        )  # fmt: skip
