"""vLLM's error bodies, in both of the shapes vLLM has used.

One exception, `EmulatorError`, carries an HTTP status, vLLM's error ``type`` and message and an
optional ``param``. The app turns it into a response with `error_response`:

- ``nested`` (vLLM >= 0.10.1):
  ``{"error": {"message": ..., "type": ..., "param": ..., "code": <status>}}``
- ``flat`` (older): ``{"object": "error", "message": ..., "type": ..., "param": ..., "code": ...}``

Inside a stream (HTTP 200 already sent) the event is ``{"error": <inner>}``, where ``<inner>`` is
the flat object in flat mode and the nested inner object otherwise (`stream_error_event`). The
HTTP status always equals ``code``.

The constructors below (`model_not_found`, `bad_request`, ...) hold vLLM's exact messages (as of
vLLM 0.32.0). In the nested shape, messages are sanitised as vLLM 0.32 does (`sanitize_message`):
file paths under system folders, and any path naming a file with an extension, read ``<path>``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from starlette.responses import Response

__all__ = [
    "EmulatorError",
    "ErrorFormat",
    "adapter_already_loaded",
    "adapter_not_found",
    "adapter_path_invalid",
    "bad_request",
    "base_name_conflict",
    "error_body",
    "error_response",
    "injected_failure",
    "lora_load_failed",
    "lora_name_and_path_required",
    "lora_name_required",
    "model_not_found",
    "sanitize_message",
    "stream_error_event",
]

ErrorFormat = Literal["flat", "nested"]


class EmulatorError(Exception):
    """An error that vLLM would answer with its standard error body."""

    def __init__(self, status: int, type_: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.param = param


_SYSTEM_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def sanitize_message(message: str) -> str:
    """vLLM 0.32's clean-up of error messages: paths under system folders (``/home``, ``/tmp``,
    ``/root``, ...) and paths of files with an extension become ``<path>``."""
    return _FILE_PATH.sub("<path>", _SYSTEM_PATH.sub("<path>", message)).strip()


def _inner(err: EmulatorError, fmt: ErrorFormat) -> dict[str, Any]:
    message = err.message if fmt == "flat" else sanitize_message(err.message)
    return {"message": message, "type": err.type, "param": err.param, "code": err.status}


def error_body(err: EmulatorError, fmt: ErrorFormat) -> dict[str, Any]:
    """The JSON body of a non-streaming error response."""
    if fmt == "flat":
        return {"object": "error", **_inner(err, fmt)}
    return {"error": _inner(err, fmt)}


def stream_error_event(err: EmulatorError, fmt: ErrorFormat) -> dict[str, Any]:
    """The payload of a ``data:`` event for an error after streaming has started."""
    if fmt == "flat":
        return {"error": {"object": "error", **_inner(err, fmt)}}
    return {"error": _inner(err, fmt)}


def error_response(
    err: EmulatorError, fmt: ErrorFormat, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response with status ``err.status`` and the configured body shape."""
    return Response(
        content=orjson.dumps(error_body(err, fmt)),
        status_code=err.status,
        media_type="application/json",
        headers=headers,
    )


def bad_request(message: str, param: str | None = None) -> EmulatorError:
    """400 ``BadRequestError`` (request validation)."""
    return EmulatorError(400, "BadRequestError", message, param)


def model_not_found(name: str, served: list[str]) -> EmulatorError:
    """404 for a ``model`` that is neither a served base name nor a registered adapter; vLLM
    lists the served base names (never the adapters) as the valid aliases."""
    message = f"The model `{name}` does not exist. Valid aliases: {', '.join(served)}."
    return EmulatorError(404, "NotFoundError", message, "model")


def injected_failure() -> EmulatorError:
    """500 injected by a profile's ``error_rate``."""
    return EmulatorError(
        500, "InternalServerError", "Injected failure (emulated engine error).", None
    )


def lora_name_and_path_required() -> EmulatorError:
    """400 from ``/v1/load_lora_adapter`` when the name or path is empty."""
    return EmulatorError(
        400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
    )


def adapter_already_loaded(name: str) -> EmulatorError:
    """400 from ``/v1/load_lora_adapter`` when the name is already registered."""
    return EmulatorError(
        400,
        "InvalidUserInput",
        f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
        "place, set 'load_inplace' to True.",
    )


def base_name_conflict(name: str) -> EmulatorError:
    """400 from ``/v1/load_lora_adapter`` when the name is a served base model's."""
    return EmulatorError(
        400, "InvalidUserInput", f"The lora adapter '{name}' conflicts with a served base model."
    )


def lora_load_failed(reason: str) -> EmulatorError:
    """500 from ``/v1/load_lora_adapter`` when the engine refuses the weights (a rank above
    ``--max-lora-rank``); the server keeps serving."""
    return EmulatorError(
        500,
        "InternalServerError",
        f"Call to add_lora method failed: Worker failed with error '{reason}', please check the "
        "stack trace above for the root cause",
    )


def adapter_path_invalid(name: str, path: str) -> EmulatorError:
    """404 from ``/v1/load_lora_adapter`` when ``path`` holds no ``adapter_config.json``."""
    return EmulatorError(
        404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
    )


def lora_name_required() -> EmulatorError:
    """400 from ``/v1/unload_lora_adapter`` when the name is empty."""
    return EmulatorError(
        400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter."
    )


def adapter_not_found(name: str) -> EmulatorError:
    """404 from ``/v1/unload_lora_adapter`` when the name is not registered."""
    return EmulatorError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
