"""`abgate controller`: evaluates every running experiment and applies the policy's decisions.

Any number of controller processes may run; one is the leader, by a Redis lock with a TTL
(`keys.CONTROLLER_LEADER`, renewed every third of the TTL; only its holder renews or releases
it: router/control/redislock.py). A standby takes over within one TTL when the leader dies.
Decisions go through the same store path as the admin API (actor `controller`), guarded by the
lock inside the transaction and by the experiment's version, so a deposed leader cannot apply
anything and no decision is applied twice. Manual actions win: only `running` experiments are
evaluated, so a paused experiment is not advanced and a rollback is final.

Per experiment the controller keeps its ramp step (share, start time, unit counts at the start;
its TTL renewed by every evaluation; a share change or a resume starts a new one), its look
memory (the always-valid tests' fixed mixing scales, running minimum p-values and intersected
intervals, analysis/looks.py; a new treatment model or a resume starts it afresh) and appends
every evaluation to a decisions stream (router/keys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from analysis.looks import current
from analysis.policy import decide
from analysis.steps import next_step, share_changed
from analysis.types import Decision, LookMemory, StepState
from router import keys
from router.control.changes import apply_change
from router.control.lifecycle import transition
from router.control.redislock import RedisLock
from router.control.retention import Retention
from router.control.store import ConfigStore, GuardLost, read_audit
from router.errors import GatewayError
from router.experiments import Experiment
from router.signals.readmodel import read_snapshot

logger = logging.getLogger(__name__)

LOCK_KEY = keys.CONTROLLER_LEADER
DECISION_ACTIONS = ("advance", "promote", "rollback", "pause")
DECISIONS_MAXLEN = 5000


decisions_key = keys.decisions
step_key = keys.controller_step
looks_key = keys.controller_looks


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "abgate_controller_leader", "1 while this controller holds the lock.", registry=registry
        )
        self.decisions = Counter(
            "abgate_controller_decisions_total",
            "Decisions applied, by action.",
            ["experiment", "action"],
            registry=registry,
        )
        self.evaluations = Counter(
            "abgate_controller_evaluations_total", "Experiment evaluations.", registry=registry
        )
        self.errors = Counter(
            "abgate_controller_errors_total", "Failed evaluations or lock renewals.",
            registry=registry,
        )  # fmt: skip
        self.srm_mismatch = Gauge(
            "abgate_experiment_srm_mismatch",
            "1 when the last evaluation flagged a sample ratio mismatch (the experiment is "
            "paused), 0 otherwise.",
            ["experiment"],
            registry=registry,
        )
        self.srm_p_value = Gauge(
            "abgate_experiment_srm_p_value",
            "p-value of the last sample ratio mismatch test that had enough units.",
            ["experiment"],
            registry=registry,
        )
        self._evaluated: set[str] = set()

    def evaluated(self, experiment: str, decision: Decision) -> None:
        """Export an evaluation: the SRM result, and every decision counter at 0 on first
        sight, so that the first decision is an increase that rate() and alerts can see."""
        if experiment not in self._evaluated:
            self._evaluated.add(experiment)
            for action in DECISION_ACTIONS:
                self.decisions.labels(experiment, action)
        srm = decision.srm
        if srm is None:
            return
        self.srm_mismatch.labels(experiment).set(1 if srm.mismatch else 0)
        if srm.p_value is not None:  # too few new units in the step: keep the last result
            self.srm_p_value.labels(experiment).set(srm.p_value)

    def forget(self, keep: set[str] | None = None) -> None:
        """Drop the per-experiment gauges of experiments not in `keep` (all when None): this
        process stopped evaluating them, so their last value would go stale."""
        for name in list(self._evaluated):
            if keep is not None and name in keep:
                continue
            for gauge in (self.srm_mismatch, self.srm_p_value):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)


class Controller:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        lock_ttl: float = 10.0,
        tick: float = 1.0,
        registry: CollectorRegistry | None = None,
        identity: str | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.redis = redis
        self.retention = retention or Retention()
        self.store = ConfigStore(redis, self.retention)
        self.lock_ttl = lock_ttl
        self.tick = tick
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        self.is_leader = False
        self.lock = RedisLock(redis, LOCK_KEY, lock_ttl, token=self.identity)
        self._last_eval: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        logger.info("controller %s started (lock TTL %.1f s)", self.identity, self.lock_ttl)
        try:
            while not stop.is_set():
                try:
                    await self._hold_lock()
                    if self.is_leader:
                        await self.evaluate_all()
                except RedisError as exc:
                    self.metrics.errors.inc()
                    self._set_leader(False)
                    logger.warning("Redis unreachable: %s", exc)
                except Exception:
                    self.metrics.errors.inc()
                    logger.exception("controller loop failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self.tick, self.lock_ttl / 3))
        finally:
            if self.is_leader:
                with contextlib.suppress(RedisError):
                    await self.lock.release()
                self._set_leader(False)
            logger.info("controller %s stopped", self.identity)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            logger.info(
                "controller %s %s", self.identity, "is the leader" if leader else "stands by"
            )
        if self.is_leader and not leader:
            self.metrics.forget()  # the new leader exports them
        self.is_leader = leader
        self.metrics.leader.set(1 if leader else 0)

    async def _hold_lock(self) -> None:
        if self.is_leader and await self.lock.renew():
            return
        self._set_leader(await self.lock.try_acquire())

    async def evaluate_all(self, now: float | None = None) -> list[Decision]:
        doc = await self.store.load()
        # a paused experiment keeps its last SRM result (the alert stays until it is resumed or
        # ended); finished and deleted ones lose theirs
        self.metrics.forget(
            {e.name for e in doc.experiments.values() if e.state in ("running", "paused")}
        )
        out: list[Decision] = []
        for exp in doc.experiments.values():
            if exp.state != "running" or not exp.policy.auto:
                continue
            t = time.time() if now is None else now
            if t - self._last_eval.get(exp.name, 0.0) < exp.policy.interval_seconds:
                continue
            self._last_eval[exp.name] = t
            decision = await self.evaluate(exp, t)
            if decision is not None:
                out.append(decision)
        return out

    async def evaluate(self, exp: Experiment, now: float) -> Decision | None:
        self.metrics.evaluations.inc()
        snapshot = await read_snapshot(self.redis, exp, now=now)
        c, t = snapshot.control.units, snapshot.treatment.units
        step = await self._step(exp, c.units, t.units, t.moved_in, now, control_moved=c.moved_in)
        memory = current(await read_looks(self.redis, exp.name), *look_owner(exp))
        decision = decide(exp.policy, snapshot, step, now, exp.ramp_steps, looks=memory)
        if decision.looks is not None:
            await self.redis.set(
                looks_key(exp.name), decision.looks.model_dump_json(),
                ex=self.retention.ended_seconds,
            )  # fmt: skip
        self.metrics.evaluated(exp.name, decision)
        await self.redis.xadd(
            decisions_key(exp.name),
            {"json": decision.model_dump_json(exclude={"looks"})},  # stored on its own
            maxlen=DECISIONS_MAXLEN,
            approximate=True,
        )
        if decision.action == "hold":
            return decision
        reason = "; ".join(decision.reasons)

        def fn(current: Experiment | None, _: dict[str, Experiment]) -> Experiment:
            if current is None:
                raise GatewayError("the experiment was deleted")
            return transition(current, decision.action, reason)  # type: ignore[arg-type]

        try:
            await apply_change(
                self.store, exp.name, fn, actor="controller", action=decision.action,
                reason=reason, if_match=exp.version, guard=(LOCK_KEY, self.identity),
            )  # fmt: skip
        except GuardLost:
            self._set_leader(False)
            logger.warning("lost the lock before applying %s to %s", decision.action, exp.name)
            return None
        except GatewayError as exc:
            # a manual change or another decision got there first: re-evaluate next time
            logger.info("not applying %s to %s: %s", decision.action, exp.name, exc.message)
            return None
        self.metrics.decisions.labels(exp.name, decision.action).inc()
        logger.info("%s %s: %s", decision.action, exp.name, reason)
        return decision

    async def _step(
        self,
        exp: Experiment,
        c_units: int,
        t_units: int,
        moved: int,
        now: float,
        *,
        control_moved: int = 0,
    ) -> StepState:
        """The experiment's ramp step. `moved`: units that moved into treatment so far (the
        share went up); `control_moved`: into control (the share went down)."""
        key = step_key(exp.name)
        keep = self.retention.ended_seconds  # renewed while evaluated; gone after the end
        stored = await read_step(self.redis, exp.name)
        # first look at an experiment whose share was changed by hand (or resumed) before:
        # the units so far arrived under other shares, so they are not this step's
        changed = stored is None and share_changed(await read_audit(self.redis, exp.name))
        # a share change (up or down) or a resume starts a new step: its minimums, SRM and time
        # start over (analysis/steps.py; the report applies the same rule to what is stored
        # here); its number sets its share of the SRM threshold (analysis/stats/srm.py)
        step = next_step(
            stored, share=exp.treatment_percent, resumed_at=exp.resumed_at,
            control_units=c_units, treatment_units=t_units, moved_in=moved,
            control_moved_in=control_moved, now=now, changed=changed, period=exp.period,
        )  # fmt: skip
        if step is stored:
            await self.redis.expire(key, keep)
        else:
            await self.redis.set(key, step.model_dump_json(), ex=keep)
        return step


async def read_step(redis: aioredis.Redis, name: str) -> StepState | None:
    """The controller's stored ramp step of experiment `name`, if any."""
    raw = await redis.get(step_key(name))
    return None if raw is None else StepState.model_validate(orjson.loads(raw))


async def read_looks(redis: aioredis.Redis, name: str) -> LookMemory | None:
    """The controller's stored look memory of experiment `name`, if any."""
    raw = await redis.get(looks_key(name))
    return None if raw is None else LookMemory.model_validate(orjson.loads(raw))


def look_owner(exp: Experiment) -> tuple[str, float]:
    """What a look memory belongs to: the treatment's model (a swap is another treatment) and
    the experiment's last resume."""
    return exp.treatment.model, exp.resumed_at
