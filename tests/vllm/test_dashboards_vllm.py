"""The vLLM dashboard against the real vLLM: a real Prometheus scrapes the server's `/metrics`
every second while requests (base model and adapter a, streamed and not) go to it; then every
dashboard query that reads vLLM's metrics only, with Grafana's variables substituted as
tests/deploy/artifacts.py does, must return data with a finite value, and every template
variable must list the served model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.deploy.artifacts import Query, label_values, metric_names, queries, require_tool
from tests.deploy.artifacts import substitute as _substitute
from tests.deploy.test_live import VARIABLES, Prometheus
from tests.vllm.server import VllmServer

VLLM_ONLY = [
    q for q in queries()
    if metric_names(q.expr) and all(n.startswith("vllm:") for n in metric_names(q.expr))
]  # fmt: skip


def _traffic(vllm: VllmServer) -> None:
    """Base model and adapter, streamed and not, the same prompt twice (prefix cache hits)."""
    with httpx.Client(base_url=vllm.url, timeout=60) as client:
        for model in (vllm.model, "a"):
            for stream in (False, True, False):
                body = {
                    "model": model, "stream": stream, "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": "import os\nimport sys\n" * 20}],
                }  # fmt: skip
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200, resp.read()
                    resp.read()


@pytest.fixture(scope="module")
def prom(vllm: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    page = httpx.get(vllm.url + "/metrics", timeout=10).text
    assert "vllm:num_requests_running" in page, (
        "vLLM exports no engine metrics (started with --disable-log-stats?)"
    )
    server = Prometheus(
        require_tool("prometheus"), tmp_path_factory.mktemp("prom-vllm"),
        {"vllm": vllm.url.removeprefix("http://")},
    )  # fmt: skip
    try:
        server.wait_up(jobs=1)
        _traffic(vllm)
        # two scrapes after the traffic, so that every rate() over 30 s sees it
        done = time.time()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = server.query("timestamp(up)")
            if up and float(up[0]["value"][1]) > done + 2:
                break
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def test_the_dashboard_reads_vllm_metrics() -> None:
    """The selection below is not empty: the vLLM dashboard's panels and its variables."""
    assert {q.dashboard for q in VLLM_ONLY} == {"vllm.json"}
    assert sum(q.kind == "panel" for q in VLLM_ONLY) >= 20
    assert {q.where for q in VLLM_ONLY if q.kind == "variable"} == {
        "variable instance",
        "variable model_name",
    }


@pytest.mark.parametrize(
    "query", [q for q in VLLM_ONLY if q.kind != "variable"], ids=lambda q: q.where
)
def test_every_vllm_query_returns_data(prom: Prometheus, query: Query) -> None:
    expr = _substitute(query.expr, VARIABLES)
    result: list[dict[str, Any]] = prom.query(expr)
    assert result, f"{query.where}: no data for\n{expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{query.where}: only {values} for\n{expr}"


@pytest.mark.parametrize(
    "query", [q for q in VLLM_ONLY if q.kind == "variable"], ids=lambda q: q.where
)
def test_every_variable_lists_the_server(prom: Prometheus, vllm: VllmServer, query: Query) -> None:
    match, label = label_values(query.expr)
    found = prom.label_values(label, _substitute(match, VARIABLES) if match else None)
    expected = {"model_name": vllm.model, "instance": vllm.url.removeprefix("http://")}[label]
    assert expected in found, (query.where, found)
