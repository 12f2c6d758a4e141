"""What the request path accepts from a client body and headers, against scripted replicas:
the fields it routes and records on are checked on its one parse, unit ids are bounded, and
an arm's model cannot be reached around its experiment through the default upstream."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from router.dataplane.proxy import Proxy
from router.dataplane.routing import RoutingTable, compile_table
from router.experiments import DefaultUpstream, Experiment
from router.settings import Settings
from tests.router.test_proxy_paths import (
    CONTROL,
    DEFAULT,
    TREATMENT,
    USAGE,
    FakeGateway,
    FakeResponse,
)

CHAT = b'{"model":"alias","messages":[{"role":"user","content":"hi"}]'


def _table(percent: float = 100, treatment_model: str = "lora") -> RoutingTable:
    exp = Experiment.model_validate(
        {
            "name": "exp",
            "route": "alias",
            "control": {"base_url": CONTROL, "model": "base"},
            "treatment": {"base_url": TREATMENT, "model": treatment_model},
            "treatment_percent": percent,
        }
    )
    return compile_table(1, [exp], DefaultUpstream(base_url=DEFAULT), ["x-user-id"])


def _gateway(table: RoutingTable | None = None, **settings: Any) -> FakeGateway:
    ok = FakeResponse(200, orjson.dumps({"choices": [], "usage": USAGE}))
    gw = FakeGateway(table or _table(), {url: [ok] * 3 for url in (CONTROL, TREATMENT, DEFAULT)})
    for name, value in settings.items():
        setattr(gw.settings, name, value)
    return gw


async def _send(
    gw: FakeGateway, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = headers or []
    if all(name != b"content-type" for name, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    scope = {"type": "http", "headers": headers}
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await Proxy(gw)(scope, receive, send, "/chat/completions")  # type: ignore[arg-type]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    status: int = sent[0]["status"]
    return status, orjson.loads(payload) if payload.startswith(b"{") else {}


async def _refused(gw: FakeGateway, body: bytes, headers: Any = None) -> dict[str, Any]:
    status, answer = await _send(gw, body, headers)
    assert status == 400, answer
    assert gw.replicas.calls == [] and gw.events == []
    error: dict[str, Any] = answer["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("members", "param", "words"),
    [
        (b',"model":"alias"', "model", "`model` more than once"),
        (b',"mod\\u0065l":"alias"', "model", "`model` more than once"),
        (b',"stream":true,"stream":false', "stream", "`stream` more than once"),
        (b',"stream":1', "stream", "expected a boolean, but got a number"),
        (b',"stream":"true"', "stream", "expected a boolean, but got a string"),
        (b',"stream":[]', "stream", "expected a boolean, but got an array"),
        (b',"stream":true,"stream_options":"x"', "stream_options", "expected an object"),
        (b',"stream":true,"stream_options":[]', "stream_options", "expected an object"),
        (b',"stream":true,"stream_options":{"include_usage":1}',
         "stream_options.include_usage", "expected a boolean"),
        (b',"user":5', "user", "expected a string, but got a number"),
        (b',"user":{"id":"u"}', "user", "expected a string, but got an object"),
    ],
)  # fmt: skip
async def test_fields_read_by_the_gateway_must_have_their_type(
    members: bytes, param: str, words: str
) -> None:
    error = await _refused(_gateway(), CHAT + members + b"}")
    assert error["param"] == param and words in error["message"], error


@pytest.mark.parametrize(
    ("members", "stream", "options_sent"),
    [
        (b',"stream":null', False, None),  # null: absent
        (b',"stream":false,"stream_options":null', False, None),
        (b',"user":null', False, None),
        (b',"stream":true', True, {"include_usage": True}),
        (b',"stream":true,"stream_options":null', True, {"include_usage": True}),
        # include_usage missing or null means false (OpenAI): the gateway asks for usage
        (b',"stream":true,"stream_options":{}', True, {"include_usage": True}),
        (b',"stream":true,"stream_options":{"include_usage":null,"x":1}', True,
         {"include_usage": True, "x": 1}),
    ],
)  # fmt: skip
async def test_null_is_absent_and_usage_is_asked_unless_the_client_asked(
    members: bytes, stream: bool, options_sent: dict[str, Any] | None
) -> None:
    gw = _gateway()
    if stream:
        chunks = [b'data: {"choices":[],"usage":' + orjson.dumps(USAGE) + b"}\n\n"]
        gw.replicas.script[TREATMENT] = [FakeResponse(chunks=[*chunks, b"data: [DONE]\n\n"])]
    status, _ = await _send(gw, CHAT + members + b"}", [(b"x-user-id", b"u")])
    assert status == 200
    sent = orjson.loads(gw.replicas.calls[0]["body"])
    assert sent.get("stream_options") == options_sent and sent["model"] == "lora"
    event = gw.events[0]
    assert event.stream is stream and event.completion_tokens == USAGE["completion_tokens"]


async def test_unit_ids_are_bounded_in_utf8_bytes() -> None:
    gw = _gateway(max_unit_id_bytes=8)
    ok, _ = await _send(gw, CHAT + b',"user":"12345678"}')
    assert ok == 200 and gw.events[-1].unit == "12345678"
    ok, _ = await _send(gw, CHAT + b"}", [(b"x-user-id", b"abcdefgh")])
    assert ok == 200 and gw.events[-1].unit == "abcdefgh"
    gw = _gateway(max_unit_id_bytes=8)
    too_long = "bytes long; this gateway accepts unit ids of at most 8 bytes (UTF-8)"
    for body, headers, param, words in [
        (CHAT + b',"user":"123456789"}', None, "user", "`user` is 9 " + too_long),
        # five characters, ten bytes
        (CHAT + b',"user":"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"}', None, "user", too_long),
        (CHAT + b"}", [(b"x-user-id", b"x" * 1024 * 1024)], "x-user-id", too_long),
        (CHAT + b"}", [(b"x-user-id", b"\xff\xfe")], "x-user-id", "must be UTF-8"),
    ]:
        error = await _refused(gw, body, headers)
        assert error["param"] == param and words in error["message"], error
    # a long `user` is fine where the unit comes from a header: it is not stored
    ok, _ = await _send(gw, CHAT + b',"user":"' + b"u" * 1000 + b'"}', [(b"x-user-id", b"h")])
    assert ok == 200 and gw.events[-1].unit == "h"


async def test_a_header_unit_id_is_read_as_utf8_like_user() -> None:
    gw = _gateway(_table(percent=50))
    await _send(gw, CHAT + b"}", [(b"x-user-id", "josé-ü".encode())])
    await _send(gw, CHAT + ',"user":"josé-ü"}'.encode())
    header, body = gw.events
    assert header.unit == body.unit == "josé-ü" and header.arm == body.arm


@pytest.mark.parametrize(
    ("mode", "model", "treatment_model", "refused"),
    [
        ("refuse_treatment", "lora", "lora", True),
        ("refuse_treatment", "base", "lora", False),  # the control's model stays reachable
        ("refuse_treatment", "base", "base", False),  # also a control's: not the treatment's
        ("refuse_treatment", "other", "lora", False),
        ("refuse", "lora", "lora", True),
        ("refuse", "base", "lora", True),
        ("allow", "lora", "lora", False),
    ],
)
async def test_arm_models_sent_directly(
    mode: str, model: str, treatment_model: str, refused: bool
) -> None:
    gw = _gateway(_table(treatment_model=treatment_model), direct_arm_models=mode)
    body = b'{"model":"' + model.encode() + b'","messages":[]}'
    status, answer = await _send(gw, body)
    if not refused:
        assert status == 200 and gw.replicas.calls[0]["url"] == DEFAULT
        assert gw.replicas.calls[0]["body"] == body and gw.events == []
        return
    assert status == 404 and gw.replicas.calls == []
    error = answer["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert (
        error["message"] == f"The model `{model}` does not exist or you do not have access to it."
    )
    for secret in ("exp", "alias", "treatment", "control", "experiment"):
        assert secret not in error["message"]


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ABGATE_"):
            monkeypatch.delenv(name)
    assert (Settings().max_unit_id_bytes, Settings().direct_arm_models) == (256, "refuse_treatment")
    monkeypatch.setenv("ABGATE_MAX_UNIT_ID_BYTES", "64")
    monkeypatch.setenv("ABGATE_DIRECT_ARM_MODELS", "refuse")
    assert (Settings().max_unit_id_bytes, Settings().direct_arm_models) == (64, "refuse")
    for name, bad in (("ABGATE_MAX_UNIT_ID_BYTES", "0"), ("ABGATE_DIRECT_ARM_MODELS", "deny")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)
