"""The emulator's FastAPI app: vLLM's OpenAI-compatible HTTP surface, without a GPU.

`create_app` builds one emulated ``vllm serve`` process from an `EmulatorConfig`. Routes, statuses,
error bodies and messages follow vLLM (docs/vllm.md lists what the gateway relies on):

- ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming or not);
- ``GET /v1/models``, ``GET /health``, ``GET /version``, ``GET /load``, ``GET /metrics``;
- ``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``, registered only when
  runtime LoRA updating is allowed (otherwise FastAPI's plain 404).

Model resolution: a missing or empty ``model`` is the base model; otherwise the LoRA registry is
checked first, then the served base names; anything else is 404 ``NotFoundError``. Responses name
the adapter for adapter requests and the first served name for base requests.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import Response, StreamingResponse

from serving.emulator import errors
from serving.emulator.config import EmulatorConfig, ModelProfile
from serving.emulator.engine import Engine
from serving.emulator.errors import EmulatorError
from serving.emulator.lora import LoRARegistry
from serving.emulator.metrics import EmulatorMetrics
from serving.emulator.middleware import ApiKeyMiddleware, RequestIdMiddleware
from serving.emulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoRAAdapterRequest,
    ParamError,
    UnloadLoRAAdapterRequest,
)

__all__ = ["EMULATED_VLLM_VERSION", "create_app"]

logger = logging.getLogger(__name__)

#: ``GET /version``: the nested mode answers as vLLM 0.32 (tests/vllm/test_contract.py); flat
#: error bodies predate 0.10.1.
EMULATED_VLLM_VERSION = {"nested": "0.32.0+abgate.emulator", "flat": "0.10.0+abgate.emulator"}
#: Full-length sequences the emulated KV cache holds (for `vllm:kv_cache_usage_perc`).
KV_SEQUENCES = 16


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _summarized(value: Any) -> Any:
    """vLLM's size-bounded stand-in for a validation error's ``input``."""
    if isinstance(value, str):
        return value[:200] + "...[truncated]" if len(value) > 200 else value
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text[:200] + "...[truncated]" if len(text) > 200 else text


def _dotted(loc: Any) -> str:
    """A validation error's ``loc`` as vLLM writes it (``body.lora_path``), without pydantic's
    internal markers (``function-after[...]``, ``union``, ...)."""
    parts = [str(part) for part in loc]
    kept = [p for p in parts if not any(c in p for c in "[]{}()") and p.lower() not in _MARKERS]
    return ".".join(kept or parts)


_MARKERS = frozenset(
    ("function-wrap", "function-after", "function-before", "function-plain", "json-or-python",
     "lax-or-strict", "chain", "default", "nullable", "tagged-union", "union", "call",
     "arguments", "is-instance", "is-subclass", "callable", "str", "int", "float", "bool",
     "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset", "complex", "none",
     "nonetype")
)  # fmt: skip


def _validation_error(exc: RequestValidationError) -> EmulatorError:
    """vLLM 0.32's 400 for a request that fails validation (bad JSON, a missing or mistyped
    field): type ``Bad Request``, ``param`` the first error's dotted location, and a message
    listing the errors. A failed check that names its field (`ParamError`, vLLM's own
    validation) is a ``BadRequestError`` with that message instead."""
    problems = list(exc.errors())
    for problem in problems:
        cause = problem.get("ctx", {}).get("error")
        if isinstance(cause, ParamError):
            return errors.bad_request(cause.message, cause.param)
    if not problems:
        return EmulatorError(400, "Bad Request", "Validation error")
    lines: list[str] = []
    for problem in problems[:10]:
        shown = dict(problem)
        if "input" in shown:
            shown["input"] = _summarized(shown["input"])
        shown["loc"] = _dotted(shown.get("loc", ()))
        text = str(shown)
        lines.append(f"  {text[:1000] + '...[truncated]' if len(text) > 1000 else text}")
    label = "error" if len(problems) == 1 else "errors"
    if len(problems) > 10:
        lines.append(f"  ...and {len(problems) - 10} more {label}")
    message = f"{len(problems)} validation {label}:\n" + "\n".join(lines)
    param = _dotted(problems[0]["loc"]) if problems[0].get("loc") else None
    return EmulatorError(400, "Bad Request", message, param)


class _Server:
    """The state of one emulated server, shared by its route handlers."""

    def __init__(self, config: EmulatorConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.loras = LoRARegistry(
            parent=config.model_name,
            max_rank=config.max_lora_rank,
            load_latency_ms=config.lora_load_latency_ms,
        )
        for name, path in config.static_loras.items():
            self.loras.add_static(name, path)
        self.metrics = EmulatorMetrics(
            registry,
            config.model_name,
            lora_enabled=config.lora_enabled,
            max_loras=config.max_loras,
        )
        # A KV cache of KV_SEQUENCES full-length sequences, in 16-token blocks.
        self.metrics.kv_capacity = config.max_model_len * KV_SEQUENCES
        self.metrics.cache_config(block_size=16, num_gpu_blocks=self.metrics.kv_capacity // 16)
        self.engine = Engine(config, self.metrics)

    def resolve(self, requested: str | None) -> tuple[str, str | None, ModelProfile]:
        """``(response model name, adapter name or None, profile)`` for a request's model."""
        config = self.config
        if requested:
            adapter = self.loras.get(requested)
            if adapter is not None:
                return adapter.name, adapter.name, config.profile_for(adapter.name)
            if requested not in config.served_model_names:
                raise errors.model_not_found(requested, config.served_model_names)
        for name in (requested, config.model_name, config.base_model):
            if name and name in config.profiles:
                return config.model_name, None, config.profiles[name]
        return config.model_name, None, config.default_profile

    async def generate(
        self, request: ChatCompletionRequest | CompletionRequest, raw: Request
    ) -> Response:
        unknown = request.unknown_fields()
        if unknown:
            logger.warning(
                "The following fields were present in the request but ignored: %s", unknown
            )
        model, adapter, profile = self.resolve(request.model)
        request_id = raw.headers.get("x-request-id") or uuid.uuid4().hex
        job = self.engine.plan(
            request, model=model, adapter=adapter, profile=profile, request_id=request_id
        )
        if not request.stream:
            return _json(await self.engine.complete(job))
        if job.failure == "before":
            raise errors.injected_failure()
        return StreamingResponse(self.engine.stream(job), media_type="text/event-stream")

    def model_cards(self) -> dict[str, Any]:
        now = int(time.time())

        def card(name: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": now,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": max_len,
                "permission": [permission],
            }

        config = self.config
        data = [
            card(name, config.base_model, None, config.max_model_len)
            for name in config.served_model_names
        ]
        data += [card(a.name, a.path, a.parent, None) for a in self.loras.adapters()]
        return {"object": "list", "data": data}


def create_app(config: EmulatorConfig, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the emulator app for ``config``.

    Args:
        config: the emulated server.
        registry: where the ``vllm:*`` metrics live; a fresh registry when omitted.

    Raises:
        ValueError: a static LoRA adapter's path holds no ``adapter_config.json`` (vLLM refuses
            to start).
    """
    server = _Server(config, registry if registry is not None else CollectorRegistry())
    fmt = config.error_format
    app = FastAPI(title="vLLM emulator (abgate)", version=EMULATED_VLLM_VERSION[fmt])
    app.state.emulator = server

    async def on_emulator_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmulatorError)
        return errors.error_response(exc, fmt)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return errors.error_response(_validation_error(exc), fmt)

    app.add_exception_handler(EmulatorError, on_emulator_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, raw: Request) -> Response:
        return await server.generate(request, raw)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request) -> Response:
        return await server.generate(request, raw)

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(server.model_cards())

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> Response:
        return _json({"version": EMULATED_VLLM_VERSION[fmt]})

    @app.get("/load")
    async def load() -> Response:
        return _json({"server_load": server.engine.in_flight})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    if config.allow_runtime_lora_updating:
        logger.warning(
            "LoRA dynamic loading & unloading is enabled in the API server. "
            "This should ONLY be used for local development!"
        )

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> Response:
            await server.loras.load(
                request.lora_name,
                request.lora_path,
                inplace=request.load_inplace,
                base_names=tuple(config.served_model_names),
            )
            message = f"Success: LoRA adapter '{request.lora_name}' added successfully."
            return Response(content=message, status_code=200)

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> Response:
            await server.loras.unload(request.lora_name)
            message = f"Success: LoRA adapter '{request.lora_name}' removed successfully."
            return Response(content=message, status_code=200)

    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(RequestIdMiddleware)
    return app
