"""Outcome kinds render exactly the error strings that events, metrics and dashboards read."""

from __future__ import annotations

import pytest

from router.dataplane.outcome import (
    Outcome,
    OutcomeKind,
    breaker_failure,
    error_string,
    status_class,
)

K = OutcomeKind

RENDERED = [
    (K.OK, "", ""),
    (K.UPSTREAM_STATUS, "503", "status_503"),
    (K.UPSTREAM_STATUS, "404", "status_404"),
    (K.UPSTREAM_FAILURE, "connect", "connect"),
    (K.UPSTREAM_FAILURE, "timeout", "timeout"),
    (K.UPSTREAM_FAILURE, "error", "error"),
    (K.FALLBACK_STATUS, "500", "fallback_status_500"),
    (K.FALLBACK_FAILURE, "connect", "fallback_connect"),
    (K.FALLBACK_FAILURE, "timeout", "fallback_timeout"),
    (K.FALLBACK_FAILURE, "error", "fallback_error"),
    (K.STREAM_FAILURE, "connect", "stream_connect"),
    (K.STREAM_FAILURE, "timeout", "stream_timeout"),
    (K.STREAM_FAILURE, "error", "stream_error"),
    (K.STREAM_ERROR, "", "stream_error"),
    (K.CLIENT_CLOSED, "", "client_closed"),
    (K.INTERNAL, "", "internal"),
]


@pytest.mark.parametrize(("kind", "detail", "expected"), RENDERED)
def test_every_kind_renders_its_recorded_string(
    kind: OutcomeKind, detail: str, expected: str
) -> None:
    assert error_string(kind, detail) == expected
    out = Outcome()
    out.fail(kind, detail)
    assert out.error == expected
    assert out.failed == (kind is not K.OK)


def test_every_kind_is_covered() -> None:
    assert {kind for kind, _, _ in RENDERED} == set(OutcomeKind)


def test_a_fresh_outcome_is_ok() -> None:
    out = Outcome()
    assert out.kind is K.OK and out.error == "" and not out.failed


@pytest.mark.parametrize("kind", list(OutcomeKind))
def test_status_class_counts_broken_streams_as_5xx(kind: OutcomeKind) -> None:
    expected = "5xx" if kind in (K.STREAM_FAILURE, K.STREAM_ERROR) else "2xx"
    assert status_class(200, kind) == expected
    assert status_class(404, K.UPSTREAM_STATUS) == "4xx"
    assert status_class(499, K.CLIENT_CLOSED) == "4xx"
    assert status_class(504, K.UPSTREAM_FAILURE) == "5xx"


@pytest.mark.parametrize("kind", list(OutcomeKind))
def test_the_breaker_ignores_success_and_clients_that_left(kind: OutcomeKind) -> None:
    assert breaker_failure(kind) == (kind not in (K.OK, K.CLIENT_CLOSED))


def test_usage_counts_only_non_negative_integers() -> None:
    out = Outcome()
    out.note_usage({"prompt_tokens": 7, "completion_tokens": 3})
    assert (out.prompt_tokens, out.completion_tokens) == (7, 3)
    out.note_usage({"prompt_tokens": -1, "completion_tokens": "3"})
    assert (out.prompt_tokens, out.completion_tokens) == (0, 0)
    out.note_usage(None)
    assert (out.prompt_tokens, out.completion_tokens) == (0, 0)
