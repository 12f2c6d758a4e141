"""One parse, one truth, checked from outside: a real gateway process in front of a recording
model server whose parsing the project did not write (Python's stdlib `json.loads`, which keeps
the last of repeated keys, as vLLM's FastAPI does).

Hypothesis writes raw request bodies by hand (tests/jsontext.py): repeated keys, `\\u` escapes
in keys and values, `model` nested and inside strings, any whitespace, `stream` and
`stream_options` of every type. For every body the gateway accepts, the model the upstream read
is the recorded arm's model, and the recorded stream flag, unit and token counts are what the
upstream read and answered; every other body is refused with 400 (404 for a string `model` that
is no route alias) and never reaches the upstream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from router import keys
from router.runtime.embedded_redis import EmbeddedRedis
from tests.jsontext import parse_pairs, request_bodies
from tests.procs import Proc, gateway

pytestmark = pytest.mark.integration

ALIAS = "support-bot"
EXPERIMENT = "hostile"
MODEL_OF_ARM = {"control": "base", "treatment": "lora-a"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
WAIT = 10.0


class RecordingUpstream:
    """An OpenAI-shaped model server on a loopback port that keeps, by X-Request-Id, the raw
    body of each completion request and its stdlib parse. It serves `base` and `lora-a` (404,
    as vLLM answers, for any other model) and streams when the parsed `stream` is truthy, with
    the usage chunk when the parsed `stream_options.include_usage` is truthy."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[bytes, Any]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, "application/json", b"{}")
                elif self.path == "/v1/models":
                    models = [{"id": m, "object": "model"} for m in MODEL_OF_ARM.values()]
                    self._send(200, "application/json", json.dumps({"data": models}).encode())
                else:
                    self._send(404, "application/json", b"{}")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                data = json.loads(raw)
                owner.seen[self.headers["X-Request-Id"]] = (raw, data)
                status, ctype, body = owner.answer(data)
                self._send(status, ctype, body)

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def answer(data: Any) -> tuple[int, str, bytes]:
        model = data.get("model")
        if model not in MODEL_OF_ARM.values():
            error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                     "param": "model", "code": 404}  # fmt: skip
            return 404, "application/json", json.dumps({"error": error}).encode()
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
        if not data.get("stream"):
            body = {"object": "chat.completion", "model": model, "choices": [choice],
                    "usage": USAGE}  # fmt: skip
            return 200, "application/json", json.dumps(body).encode()
        chunk = {"object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {"content": "ok"}}]}  # fmt: skip
        events = [chunk]
        options = data.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append({"object": "chat.completion.chunk", "model": model, "choices": [],
                           "usage": USAGE})  # fmt: skip
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return 200, "text/event-stream", sse.encode()

    def __enter__(self) -> RecordingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False, data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, store: EmbeddedRedis, upstream: RecordingUpstream
) -> Iterator[Proc]:
    config = {
        "experiments": [
            {
                "name": EXPERIMENT,
                "route": ALIAS,
                "control": {"base_url": upstream.url + "/v1", "model": "base"},
                "treatment": {"base_url": upstream.url + "/v1", "model": "lora-a"},
                "treatment_percent": 50,
                "circuit_breaker": {"enabled": False},
            }
        ]
    }
    with gateway(tmp_path_factory.mktemp("gw"), config, store.url) as proc:
        yield proc


def expected_status(text: str) -> int:
    """The gateway's rules, restated on the stdlib's reading of the body."""
    pairs, data = parse_pairs(text)
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        return 400  # a repeated top-level key
    model, stream, options, user = (data.get(k) for k in ("model", "stream", "stream_options",
                                                           "user"))  # fmt: skip
    usage = options.get("include_usage") if isinstance(options, dict) else None
    if (
        not isinstance(model, str)
        or not model
        or not (stream is None or type(stream) is bool)
        or not (options is None or isinstance(options, dict))
        or not (usage is None or type(usage) is bool)
        or not (user is None or isinstance(user, str))
    ):
        return 400
    return 200 if model == ALIAS else 404  # no default upstream


def recorded_event(r: redis.Redis, rid: str) -> dict[str, str]:
    """The request's event in the experiment's stream, once the writer has stored it."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        rows: list[tuple[str, dict[str, str]]] = r.xrevrange(  # type: ignore[assignment]
            keys.events(EXPERIMENT), count=20
        )
        for _, fields in rows:
            if fields["request_id"] == rid:
                return fields
        time.sleep(0.002)
    raise AssertionError(f"no event recorded for {rid}")


def test_the_upstream_reads_what_was_routed_and_recorded(
    gw: Proc, store: EmbeddedRedis, upstream: RecordingUpstream
) -> None:
    r = redis.Redis.from_url(store.url, decode_responses=True)
    http = httpx.Client(base_url=gw.url)
    arms: set[str] = set()
    outcomes: set[int] = set()

    @settings(max_examples=150, deadline=None)
    @given(body=request_bodies(ALIAS), user=st.sampled_from(["", "", "h1", "h2", "h3", "h4"]))
    def check(body: str, user: str) -> None:
        headers = {"Content-Type": "application/json"}
        if user:
            headers["X-User-Id"] = user  # else the unit is the body's `user`, if any
        resp = http.post("/v1/chat/completions", content=body.encode(), headers=headers)
        rid = resp.headers["x-request-id"]
        want = expected_status(body)
        assert resp.status_code == want, (body, resp.text)
        outcomes.add(want)
        if want != 200:
            assert rid not in upstream.seen, "a refused body reached the upstream"
            error = resp.json()["error"]
            assert error["type"] == "invalid_request_error" and error["request_id"] == rid
            return
        arm = resp.headers["x-abgate-arm"]
        arms.add(arm)
        _, parsed = upstream.seen[rid]
        assert parsed["model"] == MODEL_OF_ARM[arm]  # the arm's model, as the upstream read it
        event = recorded_event(r, rid)
        _, client = parse_pairs(body)
        streamed = bool(parsed.get("stream"))
        assert event["arm"] == arm and event["model"] == parsed["model"]
        assert event["stream"] == str(int(streamed)) and event["error"] == ""
        assert event["unit"] == (user or client.get("user") or "")
        assert parsed.get("user") == client.get("user")
        # usage is asked for on every stream, so tokens are recorded whatever the client asked
        assert int(event["completion_tokens"]) == USAGE["completion_tokens"]
        if streamed:
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert parsed["stream_options"]["include_usage"] is True
            chunks = [c for c in resp.text.split("\n\n") if c.startswith("data: {")]
            wanted = (client.get("stream_options") or {}).get("include_usage") is True
            assert any('"usage"' in c for c in chunks) is wanted  # only when the client asked
        else:
            assert resp.json()["model"] == parsed["model"]

    try:
        check()
    finally:
        r.close()
        http.close()
    # the bodies reached both arms, and were accepted and refused
    assert arms == {"control", "treatment"} and {200, 400} <= outcomes
