"""Adapters the model servers loaded by themselves, at their start, brought into the registry.

A vLLM server started with ``--lora-modules name=path`` (the emulator: ``--lora``) serves those
adapters without the admin API ever loading them, so the registry (router/control/adapters.py)
would not know them: `abgate adapters list` would not show them and a swap away from one could
not unload it. Discovery reads each healthy replica's `/v1/models` (serving/lora.py
`served_adapters`: the cards whose `parent` is set, with their `root` as the path) and

- records a name the registry does not know as an adapter of origin ``server_start``, ready on
  the replicas that list it, with the reason saying the server loaded it at its start;
- adds a replica to such a record when it lists the adapter too;
- marks ready again a replica whose state is ``unloaded`` but lists the adapter anyway (a server
  restarted with the same ``--lora-modules`` loads it again);
- marks ``unloaded`` a replica that no longer lists an adapter of origin ``server_start`` (its
  server restarted without it): the reconciler does not reload those, since what a server loads
  at its start is its own configuration's to decide.

A name the registry knows otherwise (loaded through the admin API, being loaded or unloaded) is
left as it is. Each change is made under the adapter's lock, after reading the replica's list
again, so it never races a load or an unload; a busy name is skipped until the next round. It
runs with each reconcile round and before `adapters list` and a swap answer (docs/adapters.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from router.control.adapters import AdapterError, AdapterManager, AdapterRecord
from serving.lora import served_adapters

logger = logging.getLogger(__name__)

START_REASON = "loaded by the model server at its start (--lora-modules); found in /v1/models"
GONE_REASON = (
    "no longer listed in /v1/models (its server restarted without it in --lora-modules, or it "
    "was unloaded outside the gateway); not reloaded"
)
AGAIN_REASON = (
    "listed again in /v1/models after it was unloaded (a server restarted with it in its "
    "--lora-modules, or a load that did not go through the gateway)"
)


async def discover(manager: AdapterManager, urls: Iterable[str] | None = None) -> list[str]:
    """Bring the adapters that replicas loaded at their start into the registry (every healthy
    replica of the pool, or `urls`): what it did, one line per change."""
    replicas = (
        [manager.replicas.replica(u) for u in dict.fromkeys(urls)]
        if urls is not None
        else manager.replicas.replicas
    )
    targets = [r for r in replicas if r.healthy]
    listings = await asyncio.gather(*(served_adapters(r.upstream) for r in targets))
    records = {r.name: r for r in await manager.all()} if targets else {}
    done: list[str] = []
    for replica, listed in zip(targets, listings, strict=True):
        if listed is None:
            continue
        for name in listed:
            if _needs_change(records.get(name), replica.url):
                done.append(await _adopt(manager, name, replica.url) or "")
        for record in records.values():
            state = record.replicas.get(replica.url)
            if (
                record.origin == "server_start"
                and record.name not in listed
                and state is not None
                and state.state == "ready"
            ):
                done.append(await _gone(manager, record.name, replica.url) or "")
    return [line for line in done if line]


async def _gone(manager: AdapterManager, name: str, url: str) -> str | None:
    """A start-time adapter the replica no longer lists: its server restarted without it, or it
    was unloaded outside the gateway. Recorded as unloaded there, not reloaded: what a server
    loads at its start is its own configuration's to decide."""
    try:
        async with manager.lock(name, wait=0.1):
            listed = await served_adapters(manager.replicas.replica(url).upstream)
            record = await manager.get(name)
            state = record.replicas.get(url) if record else None
            if listed is None or name in listed or state is None or state.state != "ready":
                return None
            await manager.set_state(name, url, "unloaded", GONE_REASON)
            what = f"{name} is no longer listed on {url}"
            logger.info("adapter discovery: %s", what)
            return what
    except AdapterError:
        return None


def _needs_change(record: AdapterRecord | None, url: str) -> bool:
    if record is None:
        return True
    state = record.replicas.get(url)
    if record.origin == "server_start" and (url not in record.urls or state is None):
        return True
    return state is not None and state.state == "unloaded"


async def _adopt(manager: AdapterManager, name: str, url: str) -> str | None:
    try:
        async with manager.lock(name, wait=0.1):
            # read again under the lock: a load or an unload may have run since
            listed = await served_adapters(manager.replicas.replica(url).upstream)
            record = await manager.get(name)
            if not listed or name not in listed or not _needs_change(record, url):
                return None
            path, parent = listed[name]
            reason = START_REASON
            if record is None:
                record = AdapterRecord(
                    name=name, path=path, base_model=parent, urls=[url],
                    created_at=time.time(), origin="server_start",
                )  # fmt: skip
                what = f"found {name} on {url}, loaded by the server at its start"
            elif url not in record.urls:
                record = record.model_copy(update={"urls": [*record.urls, url]})
                what = f"found {name} on {url} too, loaded by the server at its start"
            else:
                what = f"{name} is listed again on {url}"
                reason = AGAIN_REASON
            await manager.save(record)
            await manager.set_state(name, url, "ready", reason)
            logger.info("adapter discovery: %s", what)
            return what
    except AdapterError:
        return None  # busy: another operation on the name runs; next round
