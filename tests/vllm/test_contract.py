"""The vLLM contract: every check here runs against the real vLLM (the session's `vllm`) and
against the emulator configured like it, and both must pass. This suite is the emulator's
specification (docs/emulator.md): where the emulator deliberately differs, the check asserts the
documented behaviour of each server explicitly, by `Served.kind`.

The emulator here serves the base model under the same name as vLLM, adapter ``a`` from the
start, runtime LoRA updating on, ``--max-lora-rank 8`` and ``--max-model-len 512``, with adapter
folders of its own (a, b of rank 8, big of rank 16), so its half runs where vLLM cannot.
Adapters loaded here are named ``ca-*`` and unloaded by the test that loaded them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.lora import load_adapter, unload_adapter
from serving.types import Timeouts
from serving.upstream import Upstream
from tests.deploy.artifacts import alert_rules, exposed_names, metric_names, queries
from tests.procs import emulator
from tests.vllm.server import MAX_LORA_RANK, MODEL

MAX_MODEL_LEN = 512
CHAT = [{"role": "user", "content": "def main():"}]


@dataclass(frozen=True)
class Served:
    """One server under contract: `kind` is "vllm" or "emulator"; `url` has no /v1."""

    kind: str
    url: str
    model: str
    assets: Path

    def adapter(self, name: str) -> Path:
        return self.assets / name


def _emulator_assets(folder: Path) -> Path:
    for name, rank in (("a", 8), ("b", 8), ("big", 16)):
        (folder / name).mkdir(parents=True)
        config = {"peft_type": "LORA", "base_model_name_or_path": "base", "r": rank}
        (folder / name / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module", params=["vllm", "emulator"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    if request.param == "vllm":
        real = request.getfixturevalue("vllm")
        yield Served("vllm", real.url, real.model, real.assets)
        return
    tmp = tmp_path_factory.mktemp("contract")
    assets = _emulator_assets(tmp / "assets")
    (tmp / "base").mkdir()
    args = [
        "--base-model", str(tmp / "base"), "--served-model-name", MODEL,
        "--lora", f"a={assets / 'a'}", "--max-lora-rank", str(MAX_LORA_RANK),
        "--max-loras", "2", "--max-model-len", str(MAX_MODEL_LEN),
    ]  # fmt: skip
    with emulator(tmp, *args) as proc:
        yield Served("emulator", proc.url, MODEL, assets)


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int, type_: str, param: str | None) -> str:
    """Assert vLLM's error body with this status, type and param; return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == (type_, param, status), error
    return str(error["message"])


def _events(response: httpx.Response) -> list[Any]:
    """The SSE events of a stream, checking its framing: every event a `data: ` line and a blank
    line, the last one `[DONE]`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text = response.text
    assert text.endswith("\n\n")
    raw = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") and "\n" not in event for event in raw), raw
    assert raw[-1] == "data: [DONE]"
    return [json.loads(event[6:]) for event in raw[:-1]]


def _models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/models")
    assert response.status_code == 200
    return {card["id"]: card for card in response.json()["data"]}


# -- statuses and error bodies -----------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_naming_the_served_aliases(
    server: Served, client: httpx.Client, route: str, stream: bool
) -> None:
    body: dict[str, Any] = {"model": "ca-nope", "max_tokens": 2, "stream": stream}
    body.update({"messages": CHAT} if "chat" in route else {"prompt": "def main():"})
    message = _error(client.post(route, json=body), 404, "NotFoundError", "model")
    # adapters are never listed as aliases
    assert message == f"The model `ca-nope` does not exist. Valid aliases: {server.model}."


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_stream_options_without_stream_is_400(client: httpx.Client, route: str) -> None:
    body: dict[str, Any] = {"max_tokens": 2, "stream_options": {"include_usage": True}}
    body.update({"messages": CHAT} if "chat" in route else {"prompt": "def main():"})
    message = _error(client.post(route, json=body), 400, "BadRequestError", "stream_options")
    assert message == (
        "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
    )


def test_max_tokens_above_the_context_length_is_400(client: httpx.Client) -> None:
    too_many = MAX_MODEL_LEN + 1
    response = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": too_many})
    message = _error(response, 400, "BadRequestError", "max_tokens")
    assert message == (
        f"max_tokens={too_many} cannot be greater than max_model_len={MAX_MODEL_LEN}. Please "
        f"request fewer output tokens. (parameter=max_tokens, value={too_many})"
    )


def test_max_tokens_beyond_the_room_left_is_cut_not_refused(client: httpx.Client) -> None:
    body = {"prompt": "def main():", "max_tokens": MAX_MODEL_LEN, "ignore_eos": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["total_tokens"] <= MAX_MODEL_LEN


def test_invalid_bodies_are_400(client: httpx.Client) -> None:
    chat = "/v1/chat/completions"
    wrong = _error(client.post(chat, json={"messages": "x"}), 400, "Bad Request", "body.messages")
    assert wrong.startswith("1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages'")
    no_path = client.post("/v1/load_lora_adapter", json={"lora_name": "ca-x"})
    missing = _error(no_path, 400, "Bad Request", "body.lora_path")
    assert missing.startswith("1 validation error:\n  {'type': 'missing', 'loc': 'body.lora_path'")
    zero_n = client.post(chat, json={"messages": CHAT, "n": 0})
    assert _error(zero_n, 400, "BadRequestError", None) == "n must be at least 1, got 0."
    zero = client.post(chat, json={"messages": CHAT, "max_tokens": 0})
    assert _error(zero, 400, "BadRequestError", "max_tokens") == (
        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
    )
    empty = _error(client.post("/v1/completions", json={}), 400, "BadRequestError", "prompt")
    assert (
        empty == "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"
    )


def test_no_model_field_is_served_by_the_base_model(server: Served, client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == server.model


# -- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["base", "a"])
@pytest.mark.parametrize("include_usage", [True, False, None])
def test_chat_stream_framing_and_usage(
    server: Served, client: httpx.Client, model: str, include_usage: bool | None
) -> None:
    name = server.model if model == "base" else model
    body: dict[str, Any] = {"model": name, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    expected = whole.json()
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    chunks = _events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == name for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    role, rest = chunks[0], chunks[1:]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage_chunks = [c for c in rest if not c["choices"]]
    content = [c for c in rest if c["choices"]]
    assert content and all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content)
    assert text == expected["choices"][0]["message"]["content"]  # greedy: the same answer
    if include_usage:
        assert rest[-1] is usage_chunks[0] and len(usage_chunks) == 1  # last, before [DONE]
        usage = usage_chunks[0]["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
        want = expected["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            want["prompt_tokens"], want["completion_tokens"],
        )  # fmt: skip
        assert 1 <= len(content) <= usage["completion_tokens"]  # at most a chunk per token
    else:
        assert usage_chunks == []
        assert all(c.get("usage") is None for c in chunks)


def test_completion_stream_framing_and_usage(server: Served, client: httpx.Client) -> None:
    body: dict[str, Any] = {
        "model": "a",
        "prompt": "def main():",
        "max_tokens": 8,
        "temperature": 0,
    }
    expected = client.post("/v1/completions", json=body).json()
    events = _events(
        client.post(
            "/v1/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    )
    assert all(e["object"] == "text_completion" and e["model"] == "a" for e in events)
    *content, usage_chunk = events
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        key: expected["usage"][key]
        for key in ("prompt_tokens", "total_tokens", "completion_tokens")
    }
    assert all(e["choices"][0]["finish_reason"] is None for e in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert "".join(e["choices"][0]["text"] for e in content) == expected["choices"][0]["text"]


# -- /v1/models, /health, /version ---------------------------------------------------------------


def test_models_list_the_base_first_then_adapters(server: Served, client: httpx.Client) -> None:
    cards = list(_models(client).values())
    base = cards[0]
    assert base["id"] == server.model and base["object"] == "model"
    assert base["parent"] is None and base["max_model_len"] == MAX_MODEL_LEN
    assert isinstance(base["root"], str) and base["root"]
    adapter = _models(client)["a"]
    assert adapter["parent"] == server.model
    assert adapter["root"] == str(server.adapter("a"))
    assert adapter["max_model_len"] is None


def test_health_is_an_empty_200(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.content == b"" and "content-type" not in response.headers


def test_version(server: Served, client: httpx.Client) -> None:
    response = client.get("/version")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["version"] and re.match(r"\d+\.\d+\.\d+", body["version"])
    if server.kind == "emulator":  # documented: the emulator names itself
        assert body["version"] == "0.32.0+abgate.emulator"


#: labels Prometheus adds when it scrapes, and the histogram buckets' own
_SCRAPE_LABELS = {"instance", "job", "le"}


def _dashboard_vllm_reads() -> dict[str, set[str]]:
    """Every `vllm:` series the Grafana dashboards and the alert rules read, with the labels
    they filter or group it by (Prometheus' own labels left out)."""
    exprs = [q.expr for q in queries()] + [str(rule["expr"]) for rule in alert_rules()]
    reads: dict[str, set[str]] = {}
    for expr in exprs:
        names = {name for name in metric_names(expr) if name.startswith("vllm:")}
        grouped = {
            label.strip()
            for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
            for label in group.split(",")
        }
        values_of = re.match(r"label_values\(.*,\s*(\w+)\)$", expr.strip())
        if values_of:
            grouped.add(values_of.group(1))
        for name in names:
            used = set(grouped)
            for selector in re.findall(re.escape(name) + r"\{([^}]*)\}", expr):
                used.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            reads.setdefault(name, set()).update(used - _SCRAPE_LABELS)
    return reads


def _sample_labels(text: str) -> dict[str, set[str]]:
    """The label names of each series' samples in a Prometheus exposition."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})? ", line)
        if match and not line.startswith("#"):
            labels = set(re.findall(r'(\w+)="', match.group(2) or ""))
            found.setdefault(match.group(1), set()).update(labels)
    return found


def test_metrics_expose_every_vllm_series_the_dashboards_and_alerts_read(
    client: httpx.Client,
) -> None:
    reads = _dashboard_vllm_reads()
    assert {"vllm:lora_requests_info", "vllm:num_requests_running"} <= set(reads)
    assert "finished_reason" in reads["vllm:request_success_total"]  # the parser reads labels
    assert client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}).is_success
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    absent = sorted(set(reads) - exposed_names(response.text))
    assert absent == [], "vLLM started with --disable-log-stats exposes no vllm: series at all"
    labels = _sample_labels(response.text)
    missing = {name: sorted(used - labels.get(name, set())) for name, used in reads.items()}
    assert {name: gone for name, gone in missing.items() if gone} == {}


# -- LoRA load and unload --------------------------------------------------------------------------


def _load(client: httpx.Client, name: str, path: Path | str, **extra: Any) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path), **extra}
    return client.post("/v1/load_lora_adapter", json=body)


def _unload(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _chat(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 2}
    )


def test_load_and_unload(server: Served, client: httpx.Client) -> None:
    name, path = "ca-b", server.adapter("b")
    try:
        loaded = _load(client, name, path)
        assert (loaded.status_code, loaded.text) == (
            200, f"Success: LoRA adapter '{name}' added successfully.",
        )  # fmt: skip
        assert "content-type" not in loaded.headers  # plain text, no content type
        card = _models(client)[name]
        assert (card["parent"], card["root"], card["max_model_len"]) == (
            server.model, str(path), None,
        )  # fmt: skip
        assert _chat(client, name).status_code == 200
        again = _error(_load(client, name, path), 400, "InvalidUserInput", None)
        assert again == (
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
            "in place, set 'load_inplace' to True."
        )
        inplace = _load(client, name, path, load_inplace=True)
        assert (inplace.status_code, inplace.text) == (200, loaded.text)
        assert list(_models(client)).count(name) == 1
        unloaded = _unload(client, name)
        assert (unloaded.status_code, unloaded.text) == (
            200, f"Success: LoRA adapter '{name}' removed successfully.",
        )  # fmt: skip
        assert "content-type" not in unloaded.headers
        assert name not in _models(client)
        gone = _error(_chat(client, name), 404, "NotFoundError", "model")
        assert gone.startswith(f"The model `{name}` does not exist.")
        unknown = _error(_unload(client, name), 404, "NotFoundError", None)
        assert unknown == f"The lora adapter '{name}' cannot be found."
    finally:
        _unload(client, name)


def test_a_static_adapter_counts_as_loaded(client: httpx.Client, server: Served) -> None:
    message = _error(_load(client, "a", server.adapter("a")), 400, "InvalidUserInput", None)
    assert "has already been loaded" in message


def test_load_refusals(server: Served, client: httpx.Client) -> None:
    try:
        missing = _error(
            _load(client, "ca-c", server.adapter("missing")), 404, "NotFoundError", None
        )
        # vLLM 0.32 hides paths under system folders as <path>
        shown = (
            "<path>"
            if re.match(r"/(home|usr|opt|var|tmp|root|lib|mnt|srv)/", str(server.assets))
            else str(server.adapter("missing"))
        )
        assert missing == f"Loading lora ca-c failed: No adapter found for {shown}"
        base = _error(
            _load(client, server.model, server.adapter("b")), 400, "InvalidUserInput", None
        )
        assert base == f"The lora adapter '{server.model}' conflicts with a served base model."
        empty = _error(_load(client, "", server.adapter("b")), 400, "InvalidUserInput", None)
        assert empty == "Both 'lora_name' and 'lora_path' must be provided."
        assert {"ca-c", "ca-big"}.isdisjoint(_models(client))
    finally:
        for name in ("ca-c", "ca-big"):
            _unload(client, name)


def test_a_rank_above_the_limit_is_a_500_and_the_server_keeps_serving(
    server: Served, client: httpx.Client
) -> None:
    try:
        message = _error(
            _load(client, "ca-big", server.adapter("big")), 500, "InternalServerError", None
        )
        assert message == (
            "Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater "
            f"than max_lora_rank {MAX_LORA_RANK}.', please check the stack trace above for the "
            "root cause"
        )
        assert "ca-big" not in _models(client)
        assert _chat(client, "a").status_code == 200
        assert client.get("/health").status_code == 200
    finally:
        _unload(client, "ca-big")


def test_the_gateways_lora_client_reads_these_answers(server: Served) -> None:
    """serving/lora.py against the real answers: "already loaded" and "cannot be found" count as
    done, a refused rank is a failure that keeps vLLM's message."""

    async def run() -> None:
        upstream = Upstream(server.url + "/v1", timeouts=Timeouts(), max_connections=2)
        try:
            assert await load_adapter(upstream, "ca-g", str(server.adapter("b"))) is None
            assert await load_adapter(upstream, "ca-g", str(server.adapter("b"))) is None
            assert await unload_adapter(upstream, "ca-g") is None
            assert await unload_adapter(upstream, "ca-g") is None
            big = await load_adapter(upstream, "ca-gbig", str(server.adapter("big")))
            assert big is not None and big.startswith("load: HTTP 500: Call to add_lora")
            assert "LoRA rank 16 is greater than max_lora_rank 8." in big
        finally:
            await unload_adapter(upstream, "ca-g")
            await unload_adapter(upstream, "ca-gbig")
            await upstream.close()

    asyncio.run(run())
