"""The gateway's runtime state and its lifecycle: clients opened in order, closed in reverse.

`Gateway` holds what the request path reads (`table`, `pool`, `writer`, `metrics`) and the
background tasks that keep the routing table current (pub/sub + polling of the config version).
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
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import yaml
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.exceptions import RedisError

from router.control.changes import apply_change
from router.control.lifecycle import transition
from router.control.store import CHANNEL, ConfigDoc, ConfigStore
from router.dataplane.breaker import Breakers
from router.dataplane.routing import CompiledExperiment, RoutingTable, compile_table
from router.errors import ConfigError, Conflict, StoreUnavailable
from router.experiments import ConfigFile, Experiment
from router.metrics import ExperimentInfo, GatewayMetrics
from router.settings import Settings
from router.signals.capture import CaptureWriter, RawCapture
from router.signals.events import EventWriter
from router.signals.readmodel import unit_counts
from serving.adapters import AdapterManager, inflight_key
from serving.errors import UpstreamError
from serving.pool import OutlierPolicy, ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool

logger = logging.getLogger(__name__)


def load_config_file(path: Path) -> ConfigFile:
    """Read and validate the YAML config file; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"config file {path} is invalid: {problems}") from None


class Gateway:
    """Runtime state of one gateway process."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        if settings.redis_url is None:
            raise ConfigError("ABGATE_REDIS_URL is not set (the CLI starts a private Redis)")
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.file_config = (
            load_config_file(settings.config_file) if settings.config_file else ConfigFile()
        )
        self.table = RoutingTable(version=0, default_upstream=self.file_config.default_upstream)
        self.config_loaded = False
        self.redis: aioredis.Redis = aioredis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.store = ConfigStore(self.redis)
        self.pool = UpstreamPool(
            timeouts=Timeouts(
                connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout
            ),
            max_connections=settings.upstream_max_connections,
        )
        self.replicas = ReplicaPool(
            self.pool,
            OutlierPolicy(
                max_failures=settings.outlier_max_failures,
                base_ejection_seconds=settings.outlier_ejection_seconds,
            ),
        )
        self.writer = EventWriter(
            self.redis,
            self.metrics,
            capacity=settings.event_buffer,
            batch=settings.event_batch,
            stream_maxlen=settings.event_stream_maxlen,
            minute_retention_seconds=settings.minute_retention_seconds,
            linger_seconds=settings.event_linger_seconds,
        )
        self.adapters = AdapterManager(self.redis, self.replicas)
        self.capture = CaptureWriter(self.redis, self.registry)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.model_inflight: Counter[str] = Counter()  # requests running, by upstream model
        self._last_reconcile = 0.0
        self.breakers = Breakers()
        self.inflight: set[str] = set()  # request ids whose event is not submitted yet
        self._background: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            doc = await self.store.seed(self.file_config.experiments, actor="config-file")
            self.apply(doc)
        except RedisError as exc:
            self.metrics.redis_errors.labels("config").inc()
            logger.warning("Redis unreachable at start (%s); serving the config file", exc)
            if self.file_config.experiments:
                self.apply(ConfigDoc(0, {e.name: e for e in self.file_config.experiments}))
        self.writer.start()
        self.capture.start()
        self._watcher = asyncio.create_task(self._watch_config(), name="abgate-config-watch")
        self._health = asyncio.create_task(self._health_loop(), name="abgate-health")
        logger.info("gateway started; config version %d", self.table.version)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for loop_task in (self._watcher, self._health):
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
        await self.writer.close(self.settings.shutdown_flush_seconds)
        await self.capture.close(self.settings.shutdown_flush_seconds)
        await self.pool.close()
        await self.redis.aclose()
        logger.info("gateway stopped")

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

    # -- configuration -----------------------------------------------------------------------

    def apply(self, doc: ConfigDoc) -> None:
        """Compile `doc` and swap it in with one reference assignment."""
        table = compile_table(
            doc.version,
            list(doc.experiments.values()),
            self.file_config.default_upstream,
            self.settings.unit_id_headers,
            self.settings.feedback_window_seconds,
        )
        for exp in table.routes.values():  # create the pooled clients now, not per request
            self.replicas.set_for(exp.control.urls)
            self.replicas.set_for(exp.treatment.urls)
        if table.default_upstream is not None:
            self.replicas.set_for((table.default_upstream.base_url,))
        self.table = table
        self.breakers.forget({(e.name, e.version) for e in table.routes.values()})
        self.config_loaded = True
        self._models_cache = None
        routed = {c.name: c for c in table.routes.values()}
        self.metrics.set_config(
            doc.version,
            (
                ExperimentInfo(
                    route=e.route,
                    name=e.name,
                    state=e.state,
                    share=routed[e.name].bps / 10_000 if e.name in routed else None,
                    signals=tuple(sorted(routed[e.name].signals)) if e.name in routed else (),
                )
                for e in table.experiments.values()
            ),
        )
        logger.info("applied config version %d (%d routes)", doc.version, len(table.routes))

    async def _health_loop(self) -> None:
        """Health-check every replica (and, in later steps, reconcile adapters)."""
        interval = self.settings.health_interval_seconds
        while True:
            try:
                await self.replicas.check_all(limit=min(interval, 2.0))
                await self.on_health_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("health loop failed")
                self.metrics.errors.labels("health").inc()
            await asyncio.sleep(interval)

    async def on_health_tick(self) -> None:
        """Publish this replica's in-flight counts per model (adapter drains read them) and,
        on one gateway at a time, reconcile adapters with what each replica serves."""
        now_mono = time.monotonic()
        for replica in self.replicas.replicas:
            self.metrics.replica_healthy.labels(replica.url).set(
                1 if replica.available(now_mono) else 0
            )
            self.metrics.replica_outstanding.labels(replica.url).set(replica.outstanding)
        key = inflight_key(self.identity)
        counts: dict[Any, Any] = {m: n for m, n in self.model_inflight.items() if n > 0}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)
                pipe.expire(key, max(3, int(self.settings.health_interval_seconds * 3)))
            await pipe.execute()
        interval = self.settings.reconcile_interval_seconds
        now = time.monotonic()
        if now - self._last_reconcile < interval:
            return
        self._last_reconcile = now
        if await self.redis.set("abgate:reconciler", self.identity, nx=True,
                                px=int(interval * 1000)):  # fmt: skip
            for line in await self.adapters.reconcile():
                logger.info("reconciler: %s", line)
        self.metrics.adapter_state.clear()
        for record in await self.adapters.all():
            for url, state in record.replicas.items():
                self.metrics.adapter_state.labels(record.name, url, state.state).set(1)

    async def in_flight(self, model: str) -> int:
        """Requests using `model` right now: here, and on other gateways as they last said."""
        others = 0
        own = inflight_key(self.identity)
        async for key in self.redis.scan_iter(match="abgate:inflight:*", count=100):
            if key in (own, own.encode()):
                continue
            others += int(await self.redis.hget(key, model) or 0)
        return self.model_inflight[model] + others

    def trip(self, name: str, reason: str) -> None:
        """The circuit breaker opened: this replica already serves control; ask the store to
        roll the experiment back so that every replica does (audited, actor circuit-breaker)."""
        logger.warning("experiment %s: %s; rolling back", name, reason)
        self.metrics.breaker_trips.labels(name).inc()
        task = asyncio.create_task(self._rollback(name, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rollback(self, name: str, reason: str) -> None:
        def fn(current: Experiment | None, _: dict[str, Experiment]) -> Experiment | None:
            if current is None or current.state not in ("running", "paused"):
                raise Conflict("nothing to roll back")
            return transition(current, "rollback", reason)

        for attempt in range(5):
            try:
                doc = await apply_change(
                    self.store, name, fn, actor="circuit-breaker", action="rollback",
                    reason=reason,
                )  # fmt: skip
            except Conflict:
                return  # already rolled back (by another replica or an operator)
            except StoreUnavailable:
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            self.apply(doc)
            return
        logger.error("could not record the circuit breaker's rollback of %s", name)

    async def refresh(self) -> None:
        """Reload the document if its version moved."""
        version = await self.store.version()
        if version == 0 and self.file_config.experiments:
            # Redis lost its data (a restart without persistence): seed it again from the file
            # rather than dropping every route.
            logger.warning("Redis holds no configuration; seeding it from the config file")
            self.apply(await self.store.seed(self.file_config.experiments, actor="config-file"))
            return
        if version != self.table.version or not self.config_loaded:
            self.apply(await self.store.load())

    async def _watch_config(self) -> None:
        poll = self.settings.config_poll_seconds
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                await self.refresh()
                while True:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
                    await self.refresh()
                    await self._update_unit_gauges()
            except RedisError as exc:
                self.metrics.redis_errors.labels("config").inc()
                logger.debug("config watch: %s", exc)
                await asyncio.sleep(poll)
            except ConfigError:
                logger.exception("stored config is invalid; keeping version %d", self.table.version)
                self.metrics.errors.labels("config_watch").inc()
                await asyncio.sleep(poll)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("config watch failed")
                self.metrics.errors.labels("config_watch").inc()
                await asyncio.sleep(poll)
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _update_unit_gauges(self) -> None:
        exps = {e.experiment.name: e.experiment.route for e in self.table.routes.values()}
        if not exps:
            return
        for (name, arm), n in (await unit_counts(self.redis, list(exps))).items():
            self.metrics.units.labels(exps[name], name, arm).set(n)

    # -- model list --------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """Route aliases, then what the upstreams serve (de-duplicated by id, cached briefly)."""
        now = time.monotonic()
        cached = self._models_cache
        if cached is not None and now - cached[0] < self.settings.models_cache_seconds:
            return cached[1]
        table = self.table
        cards: dict[str, dict[str, Any]] = {}
        created = int(time.time())
        for route, exp in table.routes.items():
            cards[route] = {
                "id": route,
                "object": "model",
                "created": created,
                "owned_by": "abgate",
                "root": None,
                "parent": None,
                "abgate": {"experiment": exp.experiment.name, "state": exp.experiment.state},
            }
        urls = {u for e in table.routes.values() for u in (*e.control.urls, *e.treatment.urls)}
        if table.default_upstream is not None:
            urls.add(table.default_upstream.base_url)
        results = await asyncio.gather(
            *(self.pool.get(u).get_json("/models") for u in sorted(urls)), return_exceptions=True
        )
        for url, result in zip(sorted(urls), results, strict=True):
            if isinstance(result, UpstreamError | orjson.JSONDecodeError):
                logger.warning("GET /models on %s failed: %s", url, result)
                continue
            if isinstance(result, BaseException):
                raise result
            data = result.get("data") if isinstance(result, dict) else None
            for card in data if isinstance(data, list) else []:
                if isinstance(card, dict) and isinstance(card.get("id"), str):
                    cards.setdefault(card["id"], card)
        models = list(cards.values())
        self._models_cache = (now, models)
        return models
