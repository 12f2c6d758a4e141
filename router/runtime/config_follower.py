"""Keeps this gateway instance's routing table equal to the configuration stored in Redis.

Writers publish the new version on a pub/sub channel after each change; the follower also polls
the version, so a missed message heals within `config_poll_seconds`. Its Redis failures go to
the runtime's `RedisState`, which logs an outage once, not on every poll. The request path reads
`table`, which is replaced by one reference assignment: a request sees the old table or the new
one, never a mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.control.store import ConfigDoc, ConfigStore
from router.dataplane.breaker import Breakers
from router.dataplane.routing import RoutingTable, compile_table
from router.errors import ConfigError
from router.experiments import ConfigFile
from router.keys import CONFIG_CHANNEL
from router.metrics import ExperimentInfo, GatewayMetrics
from router.runtime.redis_state import RedisState
from router.settings import Settings
from router.signals.readmodel import unit_counts
from serving.pool import ReplicaPool

logger = logging.getLogger(__name__)


class ConfigFollower:
    """Compiles stored configuration documents and swaps them in."""

    def __init__(
        self,
        settings: Settings,
        file_config: ConfigFile,
        store: ConfigStore,
        redis: aioredis.Redis,
        replicas: ReplicaPool,
        breakers: Breakers,
        metrics: GatewayMetrics,
        redis_state: RedisState | None = None,
    ) -> None:
        self.settings = settings
        self.file_config = file_config
        self.store = store
        self.redis = redis
        self.replicas = replicas
        self.breakers = breakers
        self.metrics = metrics
        self.redis_state = redis_state or RedisState(metrics)
        self.table = RoutingTable(version=0, default_upstream=file_config.default_upstream)
        self.loaded = False  # a document (stored, or the file's while Redis is down) is applied

    async def load_initial(self) -> None:
        """Seed Redis with the config file's new experiments and apply the stored document; with
        Redis unreachable, serve the config file's experiments until it comes back."""
        try:
            doc = await self.store.seed(self.file_config.experiments, actor="config-file")
        except RedisError as exc:
            self.metrics.redis_errors.labels("config").inc()
            self.redis_state.down("config", exc)  # known from the start, and logged once
            if self.file_config.experiments:
                self.apply(ConfigDoc(0, {e.name: e for e in self.file_config.experiments}))
            return
        self.redis_state.up("config")
        self.apply(doc)

    def apply(self, doc: ConfigDoc) -> None:
        """Compile `doc` and swap it in with one reference assignment."""
        table = compile_table(
            doc.version,
            list(doc.experiments.values()),
            self.file_config.default_upstream,
            self.settings.unit_id_headers,
            self.settings.feedback_window_seconds,
        )
        configured: set[str] = set()
        for exp in table.routes.values():  # create the pooled clients now, not per request
            for arm in (exp.control, exp.treatment):
                self.replicas.configure(arm.urls, arm.target.health_path)
                configured.update(arm.urls)
        if table.default_upstream is not None:
            url = table.default_upstream.base_url
            if url in configured:  # a target's own health_path wins over the default's
                self.replicas.set_for((url,))
            else:
                self.replicas.configure((url,))
        self.table = table
        self.breakers.forget({(e.name, e.version) for e in table.routes.values()})
        self.loaded = True
        self._set_metrics(table)
        logger.info("applied config version %d (%d routes)", doc.version, len(table.routes))

    def _set_metrics(self, table: RoutingTable) -> None:
        routed = {c.name: c for c in table.routes.values()}
        self.metrics.set_config(
            table.version,
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

    async def refresh(self) -> None:
        """Reload the document if its version moved."""
        version = await self.store.version()
        if version == 0 and self.file_config.experiments:
            # Redis lost its data (a restart without persistence): seed it again from the file
            # rather than dropping every route.
            logger.warning("Redis holds no configuration; seeding it from the config file")
            self.apply(await self.store.seed(self.file_config.experiments, actor="config-file"))
            return
        if version != self.table.version or not self.loaded:
            self.apply(await self.store.load())

    async def watch(self) -> None:
        """Follow the change channel and poll the version until cancelled; on any failure, wait
        one poll interval and subscribe again."""
        poll = self.settings.config_poll_seconds
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CONFIG_CHANNEL)
                await self.refresh()
                self.redis_state.up("config")
                while True:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
                    await self.refresh()
                    await self.update_unit_gauges()
                    self.redis_state.up("config")
            except RedisError as exc:
                self.metrics.redis_errors.labels("config").inc()
                self.redis_state.down("config", exc)  # logged once per outage, not per poll
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

    async def update_unit_gauges(self) -> None:
        """Distinct units per arm of every routed experiment, as gauges."""
        exps = {e.experiment.name: e.experiment.route for e in self.table.routes.values()}
        if not exps:
            return
        for (name, arm), n in (await unit_counts(self.redis, list(exps))).items():
            self.metrics.units.labels(exps[name], name, arm).set(n)
