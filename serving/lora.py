"""vLLM's side of the LoRA adapter lifecycle: load, probe and unload on one model server.

Each call answers None when it worked, else the reason, worded for the adapter registry
(router/control/adapters.py) to store and show. What vLLM answers is in docs/vllm.md:
loading a name that is already loaded is refused with 400 "has already been loaded" (counted as
success, in either of vLLM's error shapes); the load route answers a bare 404 when runtime LoRA
updating is off; unloading an unknown name answers 404 "cannot be found" (counted as unloaded).
`served_adapters` reads the adapters a server lists in `/v1/models` (those with a `parent`),
including the ones it loaded at its start (vLLM's `--lora-modules`).
"""

from __future__ import annotations

import logging

from serving.errors import UpstreamError
from serving.health import model_cards
from serving.upstream import Upstream, parse_error_body

LOAD_TIMEOUT_SECONDS = 300
PROBE_TIMEOUT_SECONDS = 60
UNLOAD_TIMEOUT_SECONDS = 60
MODELS_TIMEOUT_SECONDS = 5
#: the most /v1/models cards `served_adapters` reads from one server
MAX_MODEL_CARDS = 1000

logger = logging.getLogger(__name__)


async def load_adapter(upstream: Upstream, name: str, path: str) -> str | None:
    try:
        status, body = await upstream.call(
            "POST", "/load_lora_adapter", json={"lora_name": name, "lora_path": path},
            limit=LOAD_TIMEOUT_SECONDS,
        )  # fmt: skip
    except UpstreamError as exc:
        return f"load: {exc}"
    if status == 200:
        return None
    info = parse_error_body(body)
    message = info.message if info else body.decode(errors="replace")[:200]
    if status == 400 and "has already been loaded" in message:
        return None
    if status == 404 and info is not None and info.type is None:
        message = "runtime LoRA loading is off (VLLM_ALLOW_RUNTIME_LORA_UPDATING)"
    elif "<path>" in message:  # vLLM hides paths in its messages; the operator needs it
        message += f" (path {path})"
    return f"load: HTTP {status}: {message}"


async def probe_adapter(upstream: Upstream, name: str) -> str | None:
    """A one-token completion with the adapter: proves that it serves, not only that it loaded."""
    try:
        status, body = await upstream.call(
            "POST", "/chat/completions", limit=PROBE_TIMEOUT_SECONDS,
            json={"model": name, "max_tokens": 1,
                  "messages": [{"role": "user", "content": "ping"}]},
        )  # fmt: skip
    except UpstreamError as exc:
        return f"probe: {exc}"
    if status == 200:
        return None
    info = parse_error_body(body)
    return f"probe: HTTP {status}: {info.message if info else ''}"


async def unload_adapter(upstream: Upstream, name: str) -> str | None:
    try:
        status, body = await upstream.call(
            "POST", "/unload_lora_adapter", json={"lora_name": name},
            limit=UNLOAD_TIMEOUT_SECONDS,
        )  # fmt: skip
    except UpstreamError as exc:
        return f"unload: {exc}"
    info = parse_error_body(body) if status != 200 else None
    if status == 200 or (status == 404 and info and "cannot be found" in info.message):
        return None
    return f"unload: HTTP {status}: {info.message if info else ''}"


async def served_adapters(upstream: Upstream) -> dict[str, tuple[str, str]] | None:
    """The LoRA adapters the server lists in `/v1/models`: name -> (path, base model), from each
    card whose `parent` (the base model) is set; its `root` is the adapter's path. None when the
    list could not be read. Cards that cannot be an adapter are skipped (and logged): a parent
    that is the card's own id, a root that is not a string; only the first `MAX_MODEL_CARDS`
    cards are read."""
    try:
        status, body = await upstream.call("GET", "/models", limit=MODELS_TIMEOUT_SECONDS)
    except UpstreamError:
        return None
    cards = model_cards(body) if status == 200 else None
    if cards is None:
        return None
    if len(cards) > MAX_MODEL_CARDS:
        logger.warning(
            "%s lists %d models; reading the first %d only",
            upstream.base_url, len(cards), MAX_MODEL_CARDS,
        )  # fmt: skip
    found: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    for card in cards[:MAX_MODEL_CARDS]:
        if not isinstance(card, dict):
            continue
        name, parent, root = card.get("id"), card.get("parent"), card.get("root")
        if not isinstance(name, str) or not isinstance(parent, str) or not parent:
            continue  # a base model (no parent), or no name at all
        if parent == name or not isinstance(root, str) or not root:
            skipped.append(name[:200])
            continue
        found[name] = (root, parent)
    if skipped:
        logger.warning(
            "%s: skipped %d model cards that are no adapter (parent is the card itself, or no "
            "root path): %s", upstream.base_url, len(skipped), ", ".join(skipped[:10]),
        )  # fmt: skip
    return found
