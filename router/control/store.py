"""Experiment configuration in Redis: one versioned document, an audit stream, change events.

Four keys (router/keys.py, docs/redis.md): the document (JSON {"version": n, "experiments":
{name: experiment}}), its version alone for cheap polling, a pub/sub channel whose message is
the new version, and the audit stream (actor, action, experiment, before, after, reason).

Writers replace the document in a WATCH/MULTI transaction that increments the version, appends
to the audit stream and publishes, so every gateway instance swaps its in-memory table at once;
instances also poll the version, so a missed message heals within `config_poll_seconds`.

The document keeps the targets' `api_key`s; the audit's before/after copies show them masked
(router/secrets.py), when written and again when read (entries written before the masking).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import WatchError

from router import keys
from router.control import periods
from router.control.retention import Retention, queue_lifetimes
from router.errors import ConfigError
from router.experiments import Experiment, check_unique, differing_fields
from router.secrets import mask_audit_pair

logger = logging.getLogger(__name__)

CONFIG_KEY = keys.CONFIG
VERSION_KEY = keys.CONFIG_VERSION
CHANNEL = keys.CONFIG_CHANNEL
AUDIT_KEY = keys.AUDIT
AUDIT_MAXLEN = 100_000


class GuardLost(ConfigError):
    """The guard key changed hands: the change was not written."""


@dataclass(frozen=True, slots=True)
class ConfigDoc:
    """One version of the stored configuration."""

    version: int
    experiments: dict[str, Experiment] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "experiments": {n: e.model_dump(mode="json") for n, e in self.experiments.items()},
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> ConfigDoc:
        try:
            data = orjson.loads(raw)
            return cls(
                version=int(data["version"]),
                experiments={
                    n: Experiment.model_validate(e) for n, e in data["experiments"].items()
                },
            )
        except ValidationError as exc:  # its text quotes the values (an api_key): not logged
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"stored config document is invalid: {problems}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"stored config document is invalid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    experiment: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str = ""


Mutation = Callable[[dict[str, Experiment]], tuple[dict[str, Experiment], list[AuditEntry]]]


class ConfigStore:
    """Reads and writes the configuration document."""

    def __init__(self, redis: aioredis.Redis, retention: Retention | None = None) -> None:
        self._redis = redis
        self._retention = retention or Retention()

    async def version(self) -> int:
        raw = await self._redis.get(VERSION_KEY)
        return int(raw) if raw is not None else 0

    async def load(self) -> ConfigDoc:
        raw = await self._redis.get(CONFIG_KEY)
        if raw is None:
            return ConfigDoc(version=0)
        return ConfigDoc.from_json(_as_bytes(raw))

    async def update(
        self, mutate: Mutation, *, retries: int = 20, guard: tuple[str, str] | None = None
    ) -> ConfigDoc:
        """Apply `mutate` to the current experiments atomically and return the new document.

        `mutate` returns the new experiments and the audit entries describing the change; it may
        raise to refuse the change (nothing is written then). No entries: nothing is written.
        `guard` = (key, value): write only while that key holds that value (the controller's
        leader lock), checked inside the same transaction.
        """
        for _ in range(retries):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    if guard is not None:
                        await pipe.watch(CONFIG_KEY, guard[0])
                        held = await pipe.get(guard[0])
                        if _as_bytes(held or b"") != guard[1].encode():
                            raise GuardLost(f"{guard[0]} is no longer held by this process")
                    else:
                        await pipe.watch(CONFIG_KEY)
                    raw = await pipe.get(CONFIG_KEY)
                    current = (
                        ConfigDoc.from_json(_as_bytes(raw)) if raw is not None else ConfigDoc(0)
                    )
                    experiments, entries = mutate(dict(current.experiments))
                    if not entries:
                        return current
                    started = periods.stamp(current.experiments, experiments, time.time())
                    for entry in entries:
                        new_exp = experiments.get(entry.experiment)
                        if isinstance(entry.after, dict) and new_exp is not None:
                            entry.after["period"] = new_exp.period
                    try:
                        check_unique(list(experiments.values()))
                    except ValueError as exc:
                        raise ConfigError(str(exc)) from exc
                    new = ConfigDoc(version=current.version + 1, experiments=experiments)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(CONFIG_KEY, new.to_json())
                    pipe.set(VERSION_KEY, new.version)
                    for entry in entries:
                        pipe.xadd(
                            AUDIT_KEY,
                            _audit_fields(entry, new.version),
                            maxlen=AUDIT_MAXLEN,
                            approximate=True,
                        )
                    pipe.publish(CHANNEL, str(new.version))
                    # the experiment's keys get their lifetime with the change (ended: expiry)
                    queue_lifetimes(pipe, current.experiments, experiments, self._retention)
                    periods.queue_records(pipe, started)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue
        raise ConfigError("the configuration changed concurrently too often; try again")

    async def seed(self, experiments: list[Experiment], *, actor: str) -> ConfigDoc:
        """Create the experiments of a config file that Redis does not have yet.

        Experiments already stored are left as they are (they may have been changed at runtime
        since); a differing file entry is logged, not applied.
        """

        def mutate(
            current: dict[str, Experiment],
        ) -> tuple[dict[str, Experiment], list[AuditEntry]]:
            entries: list[AuditEntry] = []
            for exp in experiments:
                stored = current.get(exp.name)
                if stored is None:
                    exp = exp.model_copy(update={"version": 1, "updated_at": time.time()})
                    current[exp.name] = exp
                    entries.append(
                        AuditEntry(
                            actor,
                            "create",
                            exp.name,
                            None,
                            exp.model_dump(mode="json"),
                            "from the config file",
                        )
                    )
                elif diff := differing_fields(stored, exp):
                    logger.warning(
                        "experiment %s in Redis differs from the config file in %s; the stored "
                        "one applies (change it through the admin API)",
                        exp.name,
                        ", ".join(diff),
                    )
            return current, entries

        return await self.update(mutate)


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


def _audit_fields(entry: AuditEntry, version: int) -> dict[Any, Any]:
    before, after = mask_audit_pair(entry.before, entry.after)
    return {
        "ts": f"{time.time():.3f}",
        "version": version,
        "actor": entry.actor,
        "action": entry.action,
        "experiment": entry.experiment,
        "before": orjson.dumps(before),
        "after": orjson.dumps(after),
        "reason": entry.reason,
    }


async def read_audit(
    redis: aioredis.Redis, experiment: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Audit entries, newest first, optionally of one experiment."""
    raw = await redis.xrevrange(AUDIT_KEY, count=10_000 if experiment else limit)
    entries: list[dict[str, Any]] = []
    for entry_id, fields in raw or []:
        f = {_text(k): _text(v) for k, v in (fields or {}).items()}
        if experiment is not None and f.get("experiment") != experiment:
            continue
        before, after = mask_audit_pair(
            orjson.loads(f.get("before", "null")), orjson.loads(f.get("after", "null"))
        )
        entries.append(
            {
                "id": _text(entry_id),
                "ts": float(f.get("ts", 0)),
                "version": int(f.get("version", 0)),
                "actor": f.get("actor", ""),
                "action": f.get("action", ""),
                "experiment": f.get("experiment", ""),
                "before": before,
                "after": after,
                "reason": f.get("reason", ""),
            }
        )
        if len(entries) >= limit:
            break
    return entries


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
