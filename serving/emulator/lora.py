"""The emulator's LoRA adapter registry, with vLLM's load and unload rules.

An adapter is "loadable" when its path is a directory holding ``adapter_config.json`` (the file
is not parsed). Loads and unloads of one name are serialised by a per-name `asyncio.Lock`, as in
vLLM since PR #20636; different names interleave freely.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from serving.emulator import errors

__all__ = ["LoRAAdapter", "LoRARegistry", "adapter_exists"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoRAAdapter:
    """A registered adapter.

    Attributes:
        name: the ``lora_name``, which requests use as ``model``.
        path: the ``lora_path`` (the ``root`` of its model card).
        int_id: vLLM's ``lora_int_id``, a fresh number per load.
        parent: the served base name it belongs to.
    """

    name: str
    path: str
    int_id: int
    parent: str


def adapter_exists(path: str) -> bool:
    """Whether ``path`` is a directory containing ``adapter_config.json`` (blocking I/O)."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_rank(path: str) -> int:
    """The adapter's rank `r` from its adapter_config.json (0 when unreadable)."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        return int(config.get("r", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


class LoRARegistry:
    """Adapters by name, in registration order."""

    def __init__(self, parent: str, *, max_rank: int = 16, load_latency_ms: float = 0.0) -> None:
        self._parent = parent
        self._max_rank = max_rank
        self._load_latency = load_latency_ms / 1000.0
        self._adapters: dict[str, LoRAAdapter] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_id = 1

    def get(self, name: str) -> LoRAAdapter | None:
        """The adapter registered under ``name``, if any."""
        return self._adapters.get(name)

    def adapters(self) -> list[LoRAAdapter]:
        """All registered adapters, oldest first."""
        return list(self._adapters.values())

    def add_static(self, name: str, path: str) -> LoRAAdapter:
        """Register a ``--lora-modules`` adapter at start-up.

        Raises:
            ValueError: the path holds no adapter or the name is taken; vLLM refuses to start.
        """
        if name in self._adapters:
            raise ValueError(f"LoRA adapter {name!r} is given twice")
        if not adapter_exists(path):
            raise ValueError(f"Loading lora {name} failed: No adapter found for {path}")
        return self._register(name, path)

    def _register(self, name: str, path: str) -> LoRAAdapter:
        adapter = LoRAAdapter(name=name, path=path, int_id=self._next_id, parent=self._parent)
        self._next_id += 1
        self._adapters[name] = adapter
        return adapter

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(
        self, name: str, path: str, *, inplace: bool = False, base_names: tuple[str, ...] = ()
    ) -> LoRAAdapter:
        """``/v1/load_lora_adapter``: validate, then register (vLLM 0.32's order of checks).

        ``inplace`` (``load_inplace``) reloads a name already loaded, keeping its id;
        ``base_names`` are the served base names, which no adapter may take.

        Raises:
            EmulatorError: 400 for an empty name or path, a base model's name or a name already
                loaded (without ``inplace``), 404 when the path holds no adapter, 500 when the
                rank exceeds ``--max-lora-rank`` (the engine refuses the weights).
        """
        if not name or not path:
            raise errors.lora_name_and_path_required()
        async with self._lock(name):
            if name in base_names:
                raise errors.base_name_conflict(name)
            previous = self._adapters.get(name)
            if previous is not None and not inplace:
                raise errors.adapter_already_loaded(name)
            if not await asyncio.to_thread(adapter_exists, path):
                raise errors.adapter_path_invalid(name, path)
            rank = await asyncio.to_thread(adapter_rank, path)
            if rank > self._max_rank:
                # vLLM validates the weights on load (PR #11727): ~v0.7-0.10 answered 400, 0.32
                # answers 500 with the worker's message
                raise errors.lora_load_failed(
                    f"LoRA rank {rank} is greater than max_lora_rank {self._max_rank}."
                )
            if self._load_latency:
                await asyncio.sleep(self._load_latency)  # reading weights takes time
            if previous is not None:
                adapter = LoRAAdapter(name, path, previous.int_id, previous.parent)
                self._adapters[name] = adapter
            else:
                adapter = self._register(name, path)
        logger.info("loaded LoRA adapter %s (id %d)", name, adapter.int_id)
        return adapter

    async def unload(self, name: str) -> None:
        """``/v1/unload_lora_adapter``: forget the name.

        Raises:
            EmulatorError: 400 for an empty name, 404 for a name not registered.
        """
        if not name:
            raise errors.lora_name_required()
        async with self._lock(name):
            if self._adapters.pop(name, None) is None:
                raise errors.adapter_not_found(name)
        logger.info("unloaded LoRA adapter %s", name)
