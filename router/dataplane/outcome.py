"""What happened to one proxied request: a kind of outcome, a detail, and what was measured.

The recorded error string (the `error` of the request's event in Redis and the `reason` label
of `abgate_upstream_errors_total`) is rendered from the kind and the detail by `error_string`
alone. Dashboards, alerts, the event Lua script and the tests read those strings, so their
spelling is fixed (docs/metrics.md, docs/redis.md):

    OK                ""                  success, or an upstream 4xx other than 404 passed on
    UPSTREAM_STATUS   "status_<code>"     an upstream 5xx or 404, passed on to the client
    UPSTREAM_FAILURE  "<reason>"          no response: "connect", "timeout", "error"
    FALLBACK_STATUS   "fallback_status_<code>"  treatment answered 5xx or 404; control served
    FALLBACK_FAILURE  "fallback_<reason>" treatment gave no response; control served
    STREAM_FAILURE    "stream_<reason>"   the upstream broke off an SSE stream
    STREAM_ERROR      "stream_error"      the upstream sent an error event inside the stream
    CLIENT_CLOSED     "client_closed"     the client went away during the stream
    INTERNAL          "internal"          a bug in the gateway
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OutcomeKind(enum.Enum):
    # (id, prefix of the error string, a broken stream (counted 5xx), a failure for the breaker)
    OK = 1, "", False, False
    UPSTREAM_STATUS = 2, "status_", False, True
    UPSTREAM_FAILURE = 3, "", False, True
    FALLBACK_STATUS = 4, "fallback_status_", False, True
    FALLBACK_FAILURE = 5, "fallback_", False, True
    STREAM_FAILURE = 6, "stream_", True, True
    STREAM_ERROR = 7, "stream_error", True, True
    CLIENT_CLOSED = 8, "client_closed", False, False  # not the treatment's fault
    INTERNAL = 9, "internal", False, True

    def __init__(self, _: int, prefix: str, broken_stream: bool, breaker_failure: bool) -> None:
        self.prefix = prefix
        self.broken_stream = broken_stream
        self.breaker_failure = breaker_failure


def error_string(kind: OutcomeKind, detail: str = "") -> str:
    """The recorded error of an outcome: the kind's prefix and the detail; "" when none."""
    return kind.prefix + detail


def status_class(status: int, kind: OutcomeKind) -> str:
    """The `status_class` metric label: a stream that broke after its 200 counts as 5xx."""
    if kind.broken_stream:
        return "5xx"
    return f"{status // 100}xx"


def breaker_failure(kind: OutcomeKind) -> bool:
    """Whether a treatment request with this outcome counts as failed for the breaker."""
    return kind.breaker_failure


@dataclass(slots=True)
class Outcome:
    status: int = 0
    kind: OutcomeKind = OutcomeKind.OK
    detail: str = ""  # see `error_string`: a status code or an upstream failure's reason
    ttft: float = -1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False  # the response status line was sent to the client
    captured: list[bytes] | None = None  # response bytes of a captured request

    def fail(self, kind: OutcomeKind, detail: str = "") -> None:
        """Record `kind`; after a fallback the treatment's failure stays the request's error
        (what control's relay runs into later does not erase it)."""
        if not self.fell_back:
            self.kind, self.detail = kind, detail

    @property
    def fell_back(self) -> bool:
        """Control served a treatment request (priced at control's rates)."""
        return self.kind in (OutcomeKind.FALLBACK_STATUS, OutcomeKind.FALLBACK_FAILURE)

    @property
    def failed(self) -> bool:
        """An error is recorded (the kind is not OK)."""
        return self.kind is not OutcomeKind.OK

    @property
    def error(self) -> str:
        return error_string(self.kind, self.detail)

    def note_usage(self, usage: object) -> None:
        """Take the token counts of an OpenAI `usage` object, when it is one."""
        if isinstance(usage, dict):
            self.prompt_tokens = _count(usage.get("prompt_tokens"))
            self.completion_tokens = _count(usage.get("completion_tokens"))


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
