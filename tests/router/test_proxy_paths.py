"""The request path against scripted replicas: each way a request can end is answered, counted
and recorded with its exact error string (no network, no Redis)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from router.dataplane.breaker import Breakers
from router.dataplane.proxy import Proxy
from router.dataplane.routing import RoutingTable, compile_table
from router.experiments import CircuitBreaker, DefaultUpstream, Experiment
from router.metrics import GatewayMetrics
from router.signals.events import Event
from serving.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from serving.types import Timeouts

CONTROL, TREATMENT, DEFAULT = "http://c:8000/v1", "http://t:8000/v1", "http://d:8000/v1"
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


class FakeResponse:
    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        *,
        chunks: list[bytes] | None = None,
        broken: UpstreamError | None = None,
    ) -> None:
        self.status = status
        self.content_type = "text/event-stream" if chunks is not None else "application/json"
        self.headers = [
            (b"Content-Type", self.content_type.encode()),
            (b"Date", b"today"),
            (b"X-Upstream", b"yes"),
        ]
        self._body, self._chunks, self._broken = body, chunks, broken
        self.closed = False

    async def read(self) -> bytes:
        if self._broken is not None:
            raise self._broken
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks or []:
            await asyncio.sleep(0)
            yield chunk
        if self._broken is not None:
            raise self._broken

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.closed = True


Answer = FakeResponse | BaseException


@dataclass
class FakeReplicas:
    """`set_for(urls).post(...)` answers from a script per base URL and notes each call."""

    script: dict[str, list[Answer]]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def set_for(self, urls: tuple[str, ...]) -> FakeReplicas._Set:
        return FakeReplicas._Set(self, urls)

    @dataclass
    class _Set:
        owner: FakeReplicas
        urls: tuple[str, ...]

        async def post(
            self,
            path: str,
            body: bytes,
            headers: list[tuple[str, str]],
            *,
            model: str | None,
            timeouts: Timeouts | None = None,
        ) -> FakeResponse:
            self.owner.calls.append(
                {"url": self.urls[0], "path": path, "body": body, "headers": headers,
                 "model": model, "timeouts": timeouts}
            )  # fmt: skip
            answer = self.owner.script[self.urls[0]].pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer


class SpyBreakers(Breakers):
    def __init__(self) -> None:
        super().__init__()
        self.fed: list[bool] = []

    def record(self, name: str, version: int, config: CircuitBreaker, failed: bool) -> str | None:
        self.fed.append(failed)
        return super().record(name, version, config, failed)


class FakeGateway:
    def __init__(self, table: RoutingTable, script: dict[str, list[Answer]]) -> None:
        self.table = table
        self.settings = SimpleNamespace(
            max_body_bytes=10_000,
            client_write_timeout=60.0,
            max_unit_id_bytes=256,
            direct_arm_models="refuse_treatment",
        )
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.pool = SimpleNamespace(
            get=lambda url: SimpleNamespace(timeouts=Timeouts(connect=1.0, read=2.0))
        )
        self.replicas = FakeReplicas(script)
        self.breakers = SpyBreakers()
        self.model_inflight: Counter[str] = Counter()
        self.inflight: set[str] = set()
        self.events: list[Event] = []
        self.writer = SimpleNamespace(submit=self.events.append)
        self.trips: list[tuple[str, str]] = []
        self.captured: list[tuple[Any, ...]] = []

    def trip(self, name: str, reason: str) -> None:
        self.trips.append((name, reason))

    def capture_request(self, *args: Any) -> None:
        self.captured.append(args)

    def counter(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def _table(
    *, fallback: bool = True, capture: bool = False, target: dict[str, Any] | None = None
) -> RoutingTable:
    exp = Experiment.model_validate(
        {
            "name": "exp",
            "route": "alias",
            "control": {"base_url": CONTROL, "model": "base"},
            "treatment": {"base_url": TREATMENT, "model": "lora", **(target or {})},
            "treatment_percent": 0,
            "overrides": {"u-treat": "treatment"},
            "fallback_to_control": fallback,
            **({"capture": {"rate": 1.0}} if capture else {}),
        }
    )
    return compile_table(1, [exp], DefaultUpstream(base_url=DEFAULT), ["x-user-id"])


@dataclass
class Result:
    gw: FakeGateway
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def error(self) -> str:
        assert len(self.gw.events) == 1
        return self.gw.events[0].error

    def requests(self, status_class: str, arm: str = "treatment") -> float:
        return self.gw.counter(
            "abgate_requests_total",
            route="alias", experiment="exp", arm=arm, status_class=status_class,
        )  # fmt: skip


async def _run(
    gw: FakeGateway,
    payload: dict[str, Any] | bytes,
    *,
    user: str = "u-treat",
    ctype: bytes = b"application/json",
    disconnect: bool = False,
) -> Result:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    scope = {
        "type": "http",
        "headers": [(b"content-type", ctype), (b"x-user-id", user.encode()), (b"host", b"gw")],
    }
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body}]
    sent: list[dict[str, Any]] = []
    forever = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        await forever.wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await Proxy(gw)(scope, receive, send, "/chat/completions")  # type: ignore[arg-type]
    start = sent[0]
    assert start["type"] == "http.response.start"
    return Result(
        gw, start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])
    )


CHAT = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
DELTA = {"choices": [{"delta": {"content": "x"}}]}


def _ok(**extra: Any) -> FakeResponse:
    return FakeResponse(200, orjson.dumps({"choices": [], **extra, "usage": USAGE}))


def _sse(*objs: object) -> list[bytes]:
    return [b"data: " + orjson.dumps(o) + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]


async def test_success_records_no_error_and_counts_tokens() -> None:
    gw = FakeGateway(_table(), {TREATMENT: [_ok()]})
    res = await _run(gw, CHAT)
    assert res.status == 200 and res.error == ""
    assert res.headers[b"x-abgate-arm"] == b"treatment"
    assert b"date" not in res.headers and res.headers[b"x-upstream"] == b"yes"
    assert orjson.loads(gw.replicas.calls[0]["body"])["model"] == "lora"
    assert (gw.events[0].prompt_tokens, gw.events[0].completion_tokens) == (5, 2)
    assert res.requests("2xx") == 1 and gw.breakers.fed == [False]
    assert gw.model_inflight["lora"] == 0 and gw.inflight == set()


@pytest.mark.parametrize(
    ("treatment", "control", "status", "error"),
    [
        (FakeResponse(503), _ok(), 200, "fallback_status_503"),
        # vLLM's "The model `lora` does not exist": the adapter is missing on the replica
        (FakeResponse(404), _ok(), 200, "fallback_status_404"),
        (UpstreamConnectError("refused", base_url=TREATMENT), _ok(), 200, "fallback_connect"),
        (
            UpstreamTimeout("slow", base_url=TREATMENT),
            UpstreamTimeout("slow", base_url=CONTROL),
            504,
            "fallback_timeout",
        ),
        (FakeResponse(500), FakeResponse(503), 503, "fallback_status_500"),
    ],
)
async def test_a_failed_treatment_falls_back_to_control(
    treatment: Answer, control: Answer, status: int, error: str
) -> None:
    gw = FakeGateway(_table(), {TREATMENT: [treatment], CONTROL: [control]})
    res = await _run(gw, CHAT)
    assert res.status == status and res.error == error
    assert res.headers[b"x-abgate-fallback"] == b"control"
    assert [c["url"] for c in gw.replicas.calls] == [TREATMENT, CONTROL]
    assert gw.replicas.calls[1]["model"] == "base"
    assert orjson.loads(gw.replicas.calls[1]["body"])["model"] == "base"
    assert gw.breakers.fed == [True]
    reason = dict(route="alias", experiment="exp", arm="treatment", reason=error)
    assert gw.counter("abgate_upstream_errors_total", **reason) == 1
    if isinstance(treatment, FakeResponse):
        assert treatment.closed


async def test_a_fallback_records_controls_tokens_at_controls_prices() -> None:
    """Control served: the treatment's prices do not apply to control's tokens (control here
    has none, so the request cost nothing)."""
    prices = {"prompt_price_per_million": 1000.0, "completion_price_per_million": 2000.0}
    gw = FakeGateway(_table(target=prices), {TREATMENT: [FakeResponse(404)], CONTROL: [_ok()]})
    res = await _run(gw, CHAT)
    assert res.status == 200 and res.error == "fallback_status_404"
    event = gw.events[0]
    assert (event.prompt_tokens, event.completion_tokens, event.cost_usd) == (5, 2, 0.0)
    labels = dict(route="alias", experiment="exp", arm="treatment")
    assert gw.counter("abgate_cost_usd_total", **labels) == 0.0
    # served by the treatment itself, the same tokens cost the treatment's prices
    gw = FakeGateway(_table(target=prices), {TREATMENT: [_ok()]})
    await _run(gw, CHAT)
    assert gw.events[0].cost_usd == (5 * 1000.0 + 2 * 2000.0) / 1e6
    assert gw.counter("abgate_cost_usd_total", **labels) == gw.events[0].cost_usd


async def test_the_fallback_asks_control_for_usage_where_the_client_put_options() -> None:
    gw = FakeGateway(_table(), {TREATMENT: [FakeResponse(502)], CONTROL: [FakeResponse(400)]})
    body = {**STREAM, "stream_options": {"include_usage": False, "x": 1}}
    await _run(gw, body)
    sent = orjson.loads(gw.replicas.calls[1]["body"])
    assert sent["stream_options"] == {"include_usage": True, "x": 1}
    assert sent["model"] == "base"
    # "stream_options" only inside a message: the usage request goes at the end
    gw = FakeGateway(_table(), {TREATMENT: [FakeResponse(502)], CONTROL: [FakeResponse(400)]})
    quoted = {**STREAM, "messages": [{"role": "user", "content": '"stream_options"'}]}
    await _run(gw, quoted)
    raw = gw.replicas.calls[1]["body"]
    assert raw.endswith(b',"stream_options":{"include_usage":true}}')


@pytest.mark.parametrize(
    ("answer", "status", "error", "status_class"),
    [
        (FakeResponse(503), 503, "status_503", "5xx"),
        (FakeResponse(404), 404, "status_404", "4xx"),
        (FakeResponse(400), 400, "", "4xx"),
        (UpstreamConnectError("refused", base_url=TREATMENT), 502, "connect", "5xx"),
        (UpstreamTimeout("slow", base_url=TREATMENT), 504, "timeout", "5xx"),
        (UpstreamError("odd", base_url=TREATMENT), 502, "error", "5xx"),
        (
            FakeResponse(200, broken=UpstreamConnectError("reset", base_url=TREATMENT)),
            502,
            "connect",
            "5xx",
        ),
    ],
)
async def test_without_fallback_the_failure_is_passed_on(
    answer: Answer, status: int, error: str, status_class: str
) -> None:
    gw = FakeGateway(_table(fallback=False), {TREATMENT: [answer]})
    res = await _run(gw, CHAT)
    assert res.status == status and res.error == error
    assert b"x-abgate-fallback" not in res.headers
    assert res.requests(status_class) == 1
    assert gw.breakers.fed == [bool(error)]
    if status in (502, 504):
        err = orjson.loads(res.body)["error"]
        assert err["code"] == ("upstream_timeout" if status == 504 else "upstream_unavailable")
        assert err["request_id"] == res.headers[b"x-request-id"].decode()


async def test_a_stream_is_relayed_and_its_usage_chunk_removed() -> None:
    chunks = _sse({"choices": [{"delta": {"content": "hi"}}]}, {"choices": [], "usage": USAGE})
    gw = FakeGateway(_table(capture=True), {TREATMENT: [FakeResponse(chunks=chunks)]})
    res = await _run(gw, STREAM)
    assert res.status == 200 and res.error == ""
    assert res.body == chunks[0] + chunks[2]
    assert orjson.loads(gw.replicas.calls[0]["body"])["stream_options"] == {"include_usage": True}
    assert (gw.events[0].prompt_tokens, gw.events[0].completion_tokens) == (5, 2)
    assert gw.events[0].ttft_ms >= 0
    assert len(gw.captured) == 1 and gw.captured[0][5] == chunks


@pytest.mark.parametrize(
    ("chunks", "broken", "error"),
    [
        (_sse(DELTA)[:1], UpstreamTimeout("t", base_url=""), "stream_timeout"),
        (_sse(DELTA)[:1], UpstreamConnectError("r", base_url=""), "stream_connect"),
        (_sse({"error": {"message": "boom"}}), None, "stream_error"),
    ],
)
async def test_a_broken_stream_counts_as_5xx(
    chunks: list[bytes], broken: UpstreamError | None, error: str
) -> None:
    answer = FakeResponse(chunks=chunks, broken=broken)
    gw = FakeGateway(_table(capture=True), {TREATMENT: [answer]})
    res = await _run(gw, STREAM)
    assert res.status == 200 and res.error == error
    assert res.requests("5xx") == 1 and gw.breakers.fed == [True]
    assert gw.captured == []
    if broken is not None:
        assert res.body.endswith(b"data: [DONE]\n\n")
        assert b"the model server closed the stream" in res.body


async def test_a_client_that_leaves_mid_stream_is_not_a_treatment_failure() -> None:
    chunks = _sse(*({"choices": [{"delta": {"content": str(i)}}]} for i in range(5)))
    gw = FakeGateway(_table(), {TREATMENT: [FakeResponse(chunks=chunks)]})
    await _run(gw, STREAM, disconnect=True)
    assert gw.events[0].error == "client_closed" and gw.events[0].status == 499
    assert gw.breakers.fed == [False]
    arm = {"route": "alias", "experiment": "exp", "arm": "treatment"}
    assert gw.counter("abgate_client_closed_total", **arm) == 1
    # counted as the client's doing, never as an upstream error
    assert gw.counter("abgate_upstream_errors_total", **arm, reason="client_closed") == 0


async def test_a_bug_is_an_internal_error() -> None:
    gw = FakeGateway(_table(), {TREATMENT: [ZeroDivisionError()]})
    res = await _run(gw, CHAT)
    assert res.status == 500 and res.error == "internal"
    assert orjson.loads(res.body)["error"]["message"] == "internal error"
    assert gw.counter("abgate_errors_total", component="proxy") == 1
    assert gw.breakers.fed == [True]


async def test_target_timeouts_fill_in_the_pool_defaults() -> None:
    gw = FakeGateway(_table(target={"read_timeout": 9.0}), {TREATMENT: [_ok()]})
    await _run(gw, CHAT)
    assert gw.replicas.calls[0]["timeouts"] == Timeouts(connect=1.0, read=9.0)


async def test_the_default_upstream_gets_the_body_unchanged_and_records_no_event() -> None:
    gw = FakeGateway(_table(), {DEFAULT: [FakeResponse(503)]})
    body = b'{"model": "other", "messages": []}'
    res = await _run(gw, body)
    assert res.status == 503 and gw.events == []
    call = gw.replicas.calls[0]
    assert call["body"] == body and call["model"] is None
    assert gw.counter(
        "abgate_upstream_errors_total",
        route="_default", experiment="", arm="", reason="status_503",
    ) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("body", "ctype", "status", "message"),
    [
        (CHAT, b"text/plain", 415, "the request body must be JSON sent with Content-Type: "
         "application/json; got 'text/plain'"),
        (CHAT, b"", 415, "the request body must be JSON sent with Content-Type: "
         "application/json; got no Content-Type"),
        (b"[1]", b"application/json", 400, "the request body must be a JSON object"),
        (b"{", b"application/json", 400, "the request body is not valid JSON: "),
        (b'{"x": 1}', b"application/json", 400, "you must provide a model parameter"),
        (b'{"model": "x"}', b"application/json", 404, "The model `x` does not exist"),
        (b"x" * 10_001, b"application/json", 413, "request body exceeds 10000 bytes"),
    ],
)  # fmt: skip
async def test_refused_requests(
    body: dict[str, Any] | bytes, ctype: bytes, status: int, message: str
) -> None:
    gw = FakeGateway(RoutingTable(version=1), {})
    res = await _run(gw, body, ctype=ctype)
    assert res.status == status
    err = orjson.loads(res.body)["error"]
    assert err["message"].startswith(message)
    assert list(err) == ["message", "type", "param", "code", "request_id"]
    assert gw.replicas.calls == []


async def test_a_fallback_stays_the_error_when_the_client_then_leaves() -> None:
    """The treatment failed and control's stream was relayed when the client went away: the
    request still counts as the treatment's failure, and control's tokens at control's prices
    (a later event of control's relay does not erase the fallback)."""
    prices = {"prompt_price_per_million": 1000.0, "completion_price_per_million": 2000.0}
    usage = {"choices": [], "usage": USAGE}
    chunks = _sse(*({"choices": [{"delta": {"content": str(i)}}]} for i in range(5)), usage)
    gw = FakeGateway(
        _table(target=prices),
        {TREATMENT: [FakeResponse(503)], CONTROL: [FakeResponse(chunks=chunks)]},
    )
    await _run(gw, STREAM, disconnect=True)
    event = gw.events[0]
    assert event.error == "fallback_status_503" and event.cost_usd == 0.0
    assert gw.breakers.fed == [True]
    arm = {"route": "alias", "experiment": "exp", "arm": "treatment"}
    assert gw.counter("abgate_upstream_errors_total", **arm, reason="fallback_status_503") == 1
    assert gw.counter("abgate_upstream_errors_total", **arm, reason="client_closed") == 0
