"""Value types shared with the gateway. A leaf module: it imports nothing of the project."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-target timeouts in seconds; `read` bounds the gap between two received chunks."""

    connect: float = 5.0
    read: float = 600.0


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An upstream error body, read from either of vLLM's shapes (or a plain one)."""

    message: str
    type: str | None
    code: int | str | None
