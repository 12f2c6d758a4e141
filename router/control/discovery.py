"""Adapters the model servers loaded by themselves, at their start, brought into the registry.

A vLLM server started with ``--lora-modules name=path`` (the emulator: ``--lora``) serves those
adapters without the admin API ever loading them, so the registry (router/control/adapters.py)
would not know them: `abgate adapters list` would not show them and a swap away from one could
not unload it. Discovery reads each healthy replica's `/v1/models` (serving/lora.py
`served_adapters`: the cards whose `parent` is set, with their `root` as the path; at most its
first 1,000 cards, without cards whose parent is the card itself or that have no root path),
keeps the names the registry accepts (others are logged and skipped), and

- records a name the registry does not know as an adapter of origin ``server_start``, ready on
  the replicas that list it, with the reason saying the server loaded it at its start;
- adds a replica to such a record when it lists the adapter too;
- marks ready again a replica whose state is ``unloaded`` (or, for a ``server_start`` record,
  ``failed``) but lists the adapter anyway (a server restarted with the same ``--lora-modules``
  loads it again);
- marks ``failed`` a replica that lists a known name from another path than the record's (paths
  compared normalised), with a reason naming both paths, never ``ready``: one name would stand
  for two sets of weights. This holds for adapters loaded through the admin API too (on the
  replicas of their record) and for a start-time record (the replica is added to it);
- marks ``unloaded`` a replica that no longer lists an adapter of origin ``server_start`` (its
  server restarted without it): the reconciler does not reload those, since what a server loads
  at its start is its own configuration's to decide.

A name the registry knows otherwise is left as it is. Each change is made under the adapter's
lock, after reading the replica's list again, so it never races a load or an unload; a busy name
is skipped until the next round. One discovery ends within `DISCOVERY_SECONDS` (what it had not
done by then waits for the next round). It runs with each reconcile round and before
`adapters list` and a swap answer (docs/adapters.md).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import Iterable

from router.control.adapters import (
    _NAME,
    AdapterError,
    AdapterManager,
    AdapterRecord,
    ReplicaStateName,
)
from serving.lora import served_adapters
from serving.upstream import Upstream

logger = logging.getLogger(__name__)

#: the longest one discovery runs, however slowly the replicas answer
DISCOVERY_SECONDS = 15.0

START_REASON = "loaded by the model server at its start (--lora-modules); found in /v1/models"
GONE_REASON = (
    "no longer listed in /v1/models (its server restarted without it in --lora-modules, or it "
    "was unloaded outside the gateway); not reloaded"
)
AGAIN_REASON = (
    "listed again in /v1/models after it was unloaded (a server restarted with it in its "
    "--lora-modules, or a load that did not go through the gateway)"
)


def mismatch_reason(name: str, served: str, recorded: str) -> str:
    return (
        f"serves {name} from {served}, not from {recorded} as the registry records it: one name "
        "would stand for two sets of weights; load the other weights under a new name"
    )


async def discover(
    manager: AdapterManager,
    urls: Iterable[str] | None = None,
    deadline: float = DISCOVERY_SECONDS,
) -> list[str]:
    """Bring the adapters that replicas loaded at their start into the registry (every healthy
    replica of the pool, or `urls`), within `deadline` seconds: what it did, one line per
    change."""
    done: list[str] = []
    try:
        async with asyncio.timeout(deadline):
            await _discover(manager, urls, done)
    except TimeoutError:
        logger.warning("adapter discovery: stopped after %.0f s; the rest next round", deadline)
    return [line for line in done if line]


async def _discover(manager: AdapterManager, urls: Iterable[str] | None, done: list[str]) -> None:
    replicas = (
        [manager.replicas.replica(u) for u in dict.fromkeys(urls)]
        if urls is not None
        else manager.replicas.replicas
    )
    targets = [r for r in replicas if r.healthy]
    listings = await asyncio.gather(*(_listed(r.upstream) for r in targets))
    records = {r.name: r for r in await manager.all()} if targets else {}
    for replica, listed in zip(targets, listings, strict=True):
        if listed is None:
            continue
        for name, (path, _) in listed.items():
            if _change(records.get(name), replica.url, path) is not None:
                done.append(await _adopt(manager, name, replica.url) or "")
        for record in records.values():
            state = record.replicas.get(replica.url)
            if (
                record.origin == "server_start"
                and record.name not in listed
                and state is not None
                and state.state in ("ready", "failed")
            ):
                done.append(await _gone(manager, record.name, replica.url) or "")


async def _listed(upstream: Upstream) -> dict[str, tuple[str, str]] | None:
    """`served_adapters`, without the names the registry would refuse (logged)."""
    listed = await served_adapters(upstream)
    if listed is None:
        return None
    odd = [name for name in listed if not _NAME.match(name)]
    if odd:
        logger.warning(
            "adapter discovery: %s lists %d adapters under names the registry refuses; skipped: "
            "%s", upstream.base_url, len(odd), ", ".join(repr(n[:80]) for n in odd[:10]),
        )  # fmt: skip
    return {name: v for name, v in listed.items() if name not in odd}


def _same_path(a: str, b: str) -> bool:
    return posixpath.normpath(a.strip()) == posixpath.normpath(b.strip())


async def _gone(manager: AdapterManager, name: str, url: str) -> str | None:
    """A start-time adapter the replica no longer lists: its server restarted without it, or it
    was unloaded outside the gateway. Recorded as unloaded there, not reloaded: what a server
    loads at its start is its own configuration's to decide."""
    try:
        async with manager.lock(name, wait=0.1):
            listed = await _listed(manager.replicas.replica(url).upstream)
            record = await manager.get(name)
            state = record.replicas.get(url) if record else None
            if (
                listed is None
                or name in listed
                or state is None
                or state.state not in ("ready", "failed")
                or record is None
                or record.origin != "server_start"
            ):
                return None
            await manager.set_state(name, url, "unloaded", GONE_REASON)
            what = f"{name} is no longer listed on {url}"
            logger.info("adapter discovery: %s", what)
            return what
    except AdapterError:
        return None


def _change(record: AdapterRecord | None, url: str, path: str) -> str | None:
    """What a replica listing the name from `path` asks of `record`: "new", "add", "again",
    "mismatch", or None (nothing)."""
    if record is None:
        return "new"
    state = record.replicas.get(url)
    current = state.state if state is not None else None
    start = record.origin == "server_start"
    if not _same_path(path, record.path):
        if not (start or url in record.urls) or current in ("loading", "draining"):
            return None  # not this record's replica, or a load or an unload runs there
        reason = mismatch_reason(record.name, path, record.path)
        if current == "failed" and state is not None and state.reason == reason:
            return None
        return "mismatch"
    if start and (url not in record.urls or state is None):
        return "add"
    if current == "unloaded" or (start and current == "failed"):
        return "again"
    return None


async def _adopt(manager: AdapterManager, name: str, url: str) -> str | None:
    try:
        async with manager.lock(name, wait=0.1):
            # read again under the lock: a load or an unload may have run since
            listed = await _listed(manager.replicas.replica(url).upstream)
            record = await manager.get(name)
            if not listed or name not in listed:
                return None
            path, parent = listed[name]
            change = _change(record, url, path)
            if change is None:
                return None
            state: ReplicaStateName = "ready"
            reason = START_REASON
            if record is None:
                record = AdapterRecord(
                    name=name, path=path, base_model=parent, urls=[url],
                    created_at=time.time(), origin="server_start",
                )  # fmt: skip
                what = f"found {name} on {url}, loaded by the server at its start"
            elif change == "mismatch":
                state, reason = "failed", mismatch_reason(name, path, record.path)
                what = f"{name} on {url} is served from {path}, not from {record.path}"
            elif url not in record.urls:
                what = f"found {name} on {url} too, loaded by the server at its start"
            else:
                what = f"{name} is listed again on {url}"
                reason = AGAIN_REASON
            if url not in record.urls:
                record = record.model_copy(update={"urls": [*record.urls, url]})
            await manager.save(record)
            await manager.set_state(name, url, state, reason)
            if state == "failed":
                logger.warning("adapter discovery: %s", what)
            else:
                logger.info("adapter discovery: %s", what)
            return what
    except AdapterError:
        return None  # busy: another operation on the name runs; next round
