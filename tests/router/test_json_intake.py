"""The Content-Type a JSON body is accepted with: the media type `application/json` only (the
header is forwarded unchanged, and the model server must read the body as JSON too)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.dataplane.plan import _INTAKE as COMPLETIONS
from router.errors import UnsupportedMediaType
from router.http import JsonIntake, is_json_media_type
from router.signals.feedback import _INTAKE as FEEDBACK
from tests.router.test_request_rules import CHAT, _gateway, _send

ACCEPTED = [
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/json;charset=UTF-8",
    b"Application/JSON",
    b"APPLICATION/JSON; CHARSET=UTF-8",
    b" application/json ",
    b"\tapplication/json\t; charset=utf-8 ",
    b"application/json ; charset=utf-8",
    b"application/json;",
]
REFUSED = [
    b"",
    b"application/json-seq",
    b"application/jsonx",
    b"application/json5",
    b"application/jsonl",
    b"application/json+x",
    b"application/json/x",
    b"application/json charset=utf-8",  # no `;`: not a parameter
    b"application/vnd.api+json",  # +json: vLLM's OpenAI routes refuse it
    b"application/merge-patch+json",
    b"application/x-ndjson",
    b"text/json",
    b"text/plain",
    b"application/*",
    b"json",
    b"application/ json",
    b"application /json",
    b"application/json\x00",
    b"application/json\x0b; charset=utf-8",
    b"x-application/json",
]


@pytest.mark.parametrize("ctype", ACCEPTED)
def test_json_is_accepted_with_parameters_and_whitespace(ctype: bytes) -> None:
    assert is_json_media_type(ctype)


@pytest.mark.parametrize("ctype", REFUSED)
def test_other_media_types_are_refused(ctype: bytes) -> None:
    assert not is_json_media_type(ctype)


async def _read(intake: JsonIntake, ctype: bytes | None, body: bytes = b"{}") -> bytes:
    headers = {b"content-type": ctype} if ctype is not None else {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body}

    return await intake.read(headers, receive, 1000)


@pytest.mark.parametrize("intake", [COMPLETIONS, FEEDBACK], ids=["completions", "feedback"])
async def test_both_intakes_read_json_only(intake: JsonIntake) -> None:
    for ctype in ACCEPTED:
        assert await _read(intake, ctype, b'{"a":1}') == b'{"a":1}'
    for refused in [*REFUSED, None]:
        with pytest.raises(UnsupportedMediaType) as caught:
            await _read(intake, refused)
        assert caught.value.status == 415


@pytest.mark.parametrize(
    ("ctype", "got"),
    [
        (b"application/json-seq", "got 'application/json-seq'"),
        (b"application/vnd.api+json", "got 'application/vnd.api+json'"),
        (None, "got no Content-Type"),
    ],
)
async def test_the_415_names_what_was_sent(ctype: bytes | None, got: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        await _read(COMPLETIONS, ctype)
    assert caught.value.message == (
        "the request body must be JSON sent with Content-Type: application/json; " + got
    )


@pytest.mark.parametrize(
    "ctype", [b"application/json-seq", b"application/jsonx", b"application/problem+json"]
)
async def test_a_json_lookalike_is_refused_before_routing(ctype: bytes) -> None:
    gw = _gateway()
    status, answer = await _send(gw, CHAT + b"}", [(b"content-type", ctype)])
    assert status == 415, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert gw.replicas.calls == [] and gw.events == []


async def test_a_charset_is_accepted_and_forwarded_unchanged() -> None:
    gw = _gateway()
    ctype = b"application/json; charset=utf-8"
    status, _ = await _send(gw, CHAT + b"}", [(b"content-type", ctype), (b"x-user-id", b"u")])
    assert status == 200
    (call,) = gw.replicas.calls
    assert orjson.loads(call["body"])["model"] == "lora"
    assert [v for k, v in call["headers"] if k.lower() == "content-type"] == [ctype.decode()]


async def test_a_repeated_content_type_is_refused() -> None:
    """The gateway would read one Content-Type and the model server maybe the other."""
    gw = _gateway()
    twice = [(b"content-type", b"application/json"), (b"content-type", b"text/plain")]
    status, answer = await _send(gw, CHAT + b"}", twice)
    assert status == 400 and "more than one Content-Type" in answer["error"]["message"]
    assert gw.replicas.calls == [] and gw.events == []
    # other repeated headers are no reason to refuse
    other = [(b"content-type", b"application/json"), (b"x-note", b"a"), (b"x-note", b"b")]
    status, _ = await _send(gw, CHAT + b"}", other)
    assert status == 200
