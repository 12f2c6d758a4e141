"""Errors raised when talking to model servers.

Hierarchy::

    UpstreamError               base: the model server could not give a response
    ├── UpstreamConnectError    connection refused, reset or closed before a response started
    └── UpstreamTimeout         connect or read timeout

aiohttp's exceptions are translated here, once, at the boundary (`raise ... from exc`).
"""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream failed before or while sending its response."""

    reason: str = "error"

    def __init__(self, message: str, *, base_url: str) -> None:
        super().__init__(message)
        self.base_url = base_url


class UpstreamConnectError(UpstreamError):
    reason = "connect"


class UpstreamTimeout(UpstreamError):
    reason = "timeout"
