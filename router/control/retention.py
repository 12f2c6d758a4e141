"""What happens to an experiment's keys when it ends, is deleted or is created (docs/redis.md).

While an experiment is live (draft, running, paused) its per-unit totals have no TTL: the sums
over units are updated from each unit's previous totals, so totals that vanished mid-experiment
would count their unit again as a new one. When it ends (promoted or rolled back), the gateway
stops recording its requests (router/dataplane/record.py) and the keys that grow with its
traffic expire after the retention: the per-unit totals (one hash per arm), the event stream
and the controller's step and look memory. The aggregates its report reads (per-arm totals,
sums over units, the decisions stream) are kept, bounded in size, until it is deleted.

The commands are queued in the configuration store's transaction (router/control/store.py),
with the change itself, whoever makes it (admin API, controller, circuit breaker, config file):
an experiment never ends without its keys getting their expiry. A marker (`keys.ended`) tells
the Lua scripts (router/signals/lua.py) that the experiment ended: events still on their way
are recorded, a key they create again gets the same expiry, and no unit is counted as new;
after a deletion nothing more is recorded. Deleting an experiment deletes its keys at once
(those with a TTL of their own expire by themselves); creating one clears whatever a deleted
namesake left, so a new experiment always starts from empty aggregates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router import keys
from router.experiments import LIVE_STATES, Experiment

DEFAULT_RETENTION_SECONDS = 30 * 86400
DEFAULT_FEEDBACK_WINDOW_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class Retention:
    """How long an ended experiment's per-unit state stays: `ended_seconds`, and at least its
    feedback window, so that feedback for its last requests still finds their units' totals."""

    ended_seconds: int = DEFAULT_RETENTION_SECONDS
    feedback_window_seconds: int = DEFAULT_FEEDBACK_WINDOW_SECONDS  # the gateway's default

    def seconds(self, exp: Experiment) -> int:
        window = exp.feedback_window_seconds or self.feedback_window_seconds
        return max(self.ended_seconds, window)


def retained_keys(name: str) -> tuple[str, ...]:
    """The keys that expire after the experiment's end."""
    return (
        keys.unit_totals(name, "control"),
        keys.unit_totals(name, "treatment"),
        keys.events(name),
        keys.controller_step(name),
        keys.controller_looks(name),
    )


def experiment_keys(name: str) -> tuple[str, ...]:
    """Every key of the experiment with a fixed name (the others have a TTL of their own)."""
    return (
        *retained_keys(name),
        *(keys.arm_totals(name, arm) for arm in ("control", "treatment")),
        *(keys.unit_sums(name, arm) for arm in ("control", "treatment")),
        *(keys.period_sums(name, arm) for arm in ("control", "treatment")),
        keys.periods(name),
        keys.captures(name),
        keys.decisions(name),
        keys.ended(name),
    )


def queue_lifetimes(
    pipe: Any,
    before: Mapping[str, Experiment],
    after: Mapping[str, Experiment],
    retention: Retention,
    now: float | None = None,
) -> None:
    """Queue on `pipe` (inside the store's MULTI) the key changes that go with the change of
    the experiments from `before` to `after`."""
    t = time.time() if now is None else now
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if new is None:  # deleted
            pipe.unlink(*experiment_keys(name))
            ttl = retention.ended_seconds
            pipe.hset(keys.ended(name), mapping={"at": t, "until": t, "deleted": 1})
            pipe.expire(keys.ended(name), ttl)
        elif old is None:  # created: nothing of a deleted namesake carries over
            pipe.unlink(*experiment_keys(name))
        elif old.state in LIVE_STATES and new.state not in LIVE_STATES:  # ended
            ttl = retention.seconds(new)
            pipe.hset(keys.ended(name), mapping={"at": t, "until": t + ttl, "deleted": 0})
            for key in retained_keys(name):
                pipe.expire(key, ttl)
        elif old.state not in LIVE_STATES and new.state in LIVE_STATES:  # live again
            pipe.unlink(keys.ended(name))
            for key in retained_keys(name):
                pipe.persist(key)
