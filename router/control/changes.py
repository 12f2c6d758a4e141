"""One change to one experiment, the same way for every actor (admin API, controller, circuit
breaker): inside the store's transaction, with `If-Match`, route checks and an audit entry."""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from router.control.store import AuditEntry, ConfigDoc, ConfigStore, GuardLost
from router.errors import ConfigError, Conflict, PreconditionFailed, StoreUnavailable
from router.experiments import LIVE_STATES, Experiment

logger = logging.getLogger(__name__)

ChangeFn = Callable[[Experiment | None, dict[str, Experiment]], Experiment | None]


async def apply_change(
    store: ConfigStore,
    name: str,
    fn: ChangeFn,
    *,
    actor: str,
    action: str,
    reason: str,
    if_match: int | None = None,
    guard: tuple[str, str] | None = None,
) -> ConfigDoc:
    """Apply `fn` to experiment `name` (None: it does not exist; returning None deletes it).

    Raises PreconditionFailed (stale If-Match), Conflict (route taken, invalid document),
    StoreUnavailable (Redis unreachable), GuardLost (the guard key changed hands), or whatever
    `fn` raises to refuse the change. Nothing is written then.
    """

    def mutate(exps: dict[str, Experiment]) -> tuple[dict[str, Experiment], list[AuditEntry]]:
        current = exps.get(name)
        if current is not None and if_match is not None and if_match != current.version:
            raise PreconditionFailed(
                f"experiment {name!r} is at version {current.version}, not {if_match}; "
                "read it again and retry"
            )
        new = fn(current, exps)
        if new is None:
            exps.pop(name, None)
        else:
            check_route_free(exps, new)
            exps[name] = new
        before = current.model_dump(mode="json") if current is not None else None
        after = new.model_dump(mode="json") if new is not None else None
        return exps, [AuditEntry(actor, action, name, before, after, reason)]

    try:
        doc = await store.update(mutate, guard=guard)
    except RedisError as exc:
        # the detail (host, port, Redis's words) is for the operator's log, not the client
        logger.warning("%s %s by %s: Redis error (%s): %s", action, name, actor,
                       type(exc).__name__, exc)  # fmt: skip
        raise StoreUnavailable(
            "the configuration store (Redis) is unavailable; nothing was changed, retry later"
        ) from exc
    except GuardLost:
        raise
    except ConfigError as exc:
        raise Conflict(str(exc)) from exc
    logger.info("%s %s by %s: %s", action, name, actor, reason or "-")
    return doc


def check_route_free(exps: dict[str, Experiment], new: Experiment) -> None:
    if new.state not in LIVE_STATES:
        return
    for other in exps.values():
        if other.name != new.name and other.route == new.route and other.state in LIVE_STATES:
            raise Conflict(
                f"route {new.route!r} already has the {other.state} experiment {other.name!r}; "
                "roll it back, promote it or delete it first"
            )
