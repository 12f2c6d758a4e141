"""Flywheel capture: redaction rules, exchange extraction, and config validation."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from router.experiments import Capture
from router.signals.capture import extract_exchange
from router.signals.redact import Redactor, check_pattern


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ana.m+tag@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call +1 (555) 123-4567 or 555.123.4567", "call [PHONE] or [PHONE]"),
        ("+44 20 7946 0958", "[PHONE]"),
        ("card 4111 1111 1111 1111 and 4111-1111-1111-1111", "card [CARD] and [CARD]"),
        # numbers that are not phone numbers stay
        ("in 2024 I paid 1,299.00 for 3 items; order 12345", None),
        ("version 10.0.0.1 and 3.14159", None),
    ],
)
def test_builtin_redactions(text: str, expected: str | None) -> None:
    redact = Redactor.from_config(["emails", "credit_cards", "phone_numbers"])
    assert redact(text) == (text if expected is None else expected)


def test_custom_patterns_and_their_errors() -> None:
    redact = Redactor.from_config([r"ACCT-\d+", "secret"])
    assert redact("ACCT-991 has a secret") == "[REDACTED] has a [REDACTED]"
    with pytest.raises(ValueError, match=r"neither a built-in .* nor a valid regular expression"):
        check_pattern("([unclosed")
    with pytest.raises(ValueError, match="matches the empty string"):
        check_pattern("x*")


def test_capture_config_is_validated() -> None:
    assert Capture(rate=0.05).redact == ["emails", "phone_numbers", "credit_cards"]
    for bad in ({"rate": 0}, {"rate": 1.5}, {"rate": 0.1, "redact": ["(("]},
                {"rate": 0.1, "max_items": 0}):  # fmt: skip
        with pytest.raises(ValidationError):
            Capture.model_validate(bad)


def test_exchange_from_chat_completion_and_prompt() -> None:
    req = orjson.dumps({"model": "m", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "image_url"}]}]})  # fmt: skip
    resp = orjson.dumps({"choices": [{"index": 0, "message": {"content": "hello"}}]})
    assert extract_exchange(req, resp, False) == (
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "hello",
    )
    req = orjson.dumps({"model": "m", "prompt": "Once upon"})
    resp = orjson.dumps({"choices": [{"index": 0, "text": " a time"}]})
    assert extract_exchange(req, resp, False) == ("Once upon", " a time")
    assert extract_exchange(b"not json", resp, False) is None
    assert extract_exchange(req, b"{}", False) is None


def test_exchange_from_a_stream_keeps_the_first_choice() -> None:
    req = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo\nthere"}}]},
        {"choices": [], "usage": {"prompt_tokens": 1}},
    ]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    assert extract_exchange(req, body, True) == ([{"role": "user", "content": "hi"}],
                                                 "Hello\nthere")  # fmt: skip


def test_content_parts_keep_their_text() -> None:
    req = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in"}, {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "this picture?"}]}]})  # fmt: skip
    resp = orjson.dumps({"choices": [{"index": 0, "message": {"content": "A cat."}}]})
    assert extract_exchange(req, resp, False) == (
        [{"role": "user", "content": "What is in\nthis picture?"}],
        "A cat.",
    )


def test_oversized_exchanges_and_a_full_queue_are_counted_not_queued() -> None:
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from router.signals.capture import CaptureWriter, RawCapture

    registry = CollectorRegistry()
    writer = CaptureWriter(
        aioredis.Redis(), registry, capacity=10, max_item_bytes=100, max_queued_bytes=150
    )

    def item(size: int) -> RawCapture:
        return RawCapture("req_1", 0.0, "e", "r", "control", "m", b"x" * size, b"", False,
                          Redactor.from_config([]), 10, 60)  # fmt: skip

    writer.submit(item(101))  # too large
    writer.submit(item(90))  # queued
    writer.submit(item(90))  # would exceed the queued bytes
    value = registry.get_sample_value
    assert value("abgate_captures_total", {"result": "too_large"}) == 1
    assert value("abgate_captures_total", {"result": "dropped"}) == 1
    assert writer._queue.qsize() == 1
