"""An experiment's periods: the spans between changes that make earlier data incomparable.

A new period starts whenever the treatment share changes (a ramp step, a rollback, a promotion),
either arm's target changes (an adapter or model swap, other replicas) or the experiment is
resumed. The store (router/control/store.py) bumps `Experiment.period` in the transaction of
the change, whoever makes it, and records the period's start in `keys.periods`: period -> JSON
``{"started_at", "share", "treatment", "control"}`` (the arms' models). The gateway stamps each
event with the period of the configuration it routed under, and the sums over units are kept
per period too (router/signals/lua.py), so that estimates compare the arms within periods
(analysis/metrics.py `by_period`) and a swap starts a new ramp step (analysis/steps.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from router import keys
from router.experiments import Experiment, Target


def _target(t: Target) -> tuple[str, tuple[str, ...]]:
    return t.model, t.urls


def starts_period(old: Experiment, new: Experiment) -> bool:
    """Whether the change from `old` to `new` starts a new period."""
    return (
        old.treatment_percent != new.treatment_percent
        or old.resumed_at != new.resumed_at
        or _target(old.treatment) != _target(new.treatment)
        or _target(old.control) != _target(new.control)
    )


def record(exp: Experiment, now: float) -> bytes:
    """The JSON record of the period `exp` starts."""
    return orjson.dumps({
        "started_at": round(now, 3), "share": exp.treatment_percent,
        "treatment": exp.treatment.model, "control": exp.control.model,
    })  # fmt: skip


def stamp(
    before: Mapping[str, Experiment], after: dict[str, Experiment], now: float
) -> dict[str, tuple[int, bytes]]:
    """Set every changed experiment's `period` in `after` (in place): one more than before when
    the change starts a period, else the stored one (clients cannot set it); and its
    `target_period`, the period in which a new treatment model started. Returns the
    records to write, name -> (period, JSON); a created experiment starts at period 0."""
    out: dict[str, tuple[int, bytes]] = {}
    for name, new in after.items():
        old = before.get(name)
        if old is None:
            if new.period != 0 or new.target_period != 0:
                new = after[name] = new.model_copy(update={"period": 0, "target_period": 0})
            out[name] = (0, record(new, now))
        elif old is not new:
            if starts_period(old, new):
                period = old.period + 1
                swapped = old.treatment.model != new.treatment.model
                target = period if swapped else old.target_period
                after[name] = new.model_copy(update={"period": period, "target_period": target})
                out[name] = (period, record(new, now))
            elif new.period != old.period or new.target_period != old.target_period:
                after[name] = new.model_copy(
                    update={"period": old.period, "target_period": old.target_period}
                )
    return out


def queue_records(pipe: Any, records: Mapping[str, tuple[int, bytes]]) -> None:
    """Queue the period records on `pipe` (after the lifetimes: a creation clears the keys)."""
    for name, (period, raw) in records.items():
        pipe.hset(keys.periods(name), str(period), raw)


async def read_periods(redis: aioredis.Redis, name: str) -> list[dict[str, Any]]:
    """The experiment's period records, oldest first, each with its `period`."""
    raw = await redis.hgetall(keys.periods(name))
    rows = [{"period": int(k), **orjson.loads(v)} for k, v in (raw or {}).items()]
    return sorted(rows, key=lambda r: r["period"])
