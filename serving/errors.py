"""Errors raised when talking to model servers.

Hierarchy::

    UpstreamError               base: the model server could not give a response
    ├── UpstreamConnectError    connection refused, reset or closed before a response started
    ├── UpstreamTimeout         connect or read timeout
    ├── UpstreamProtocolError   a response that is not HTTP/1.1, or whose head is over the limits
    ├── UpstreamTooLarge        a response body over the limit of what is read into memory
    └── UpstreamPoolExhausted   every connection to the replica stayed busy for the pool timeout

`reason` is a short, stable word for each (it names the error in metrics and events).
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


class UpstreamProtocolError(UpstreamError):
    reason = "protocol"


class UpstreamTooLarge(UpstreamError):
    reason = "too_large"

    def __init__(self, message: str, *, base_url: str, limit: int) -> None:
        super().__init__(message, base_url=base_url)
        self.limit = limit


class UpstreamPoolExhausted(UpstreamError):
    """Not the replica's failure: this gateway instance has no free connection to it."""

    reason = "pool_exhausted"

    def __init__(self, message: str, *, base_url: str, connections: int, waited: float) -> None:
        super().__init__(message, base_url=base_url)
        self.connections = connections
        self.waited = waited
