"""Dashboards and alert rules against a real Prometheus scraping a real stack.

redis-server, the vLLM emulator, a gateway and the controller run as processes; a Prometheus
on a free port scrapes them every second while simulated users send requests (streaming and
not) and every kind of feedback to an experiment whose treatment fails now and then and that
the controller advances once. Then every PromQL expression of every dashboard, with Grafana's
variables substituted, must return data with at least one finite value; every metric a
dashboard or alert names must be on the /metrics page of the process it belongs to; every
alert expression must evaluate.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.runtime.embedded_redis import EmbeddedRedis, free_port, stop_process
from tests.deploy.artifacts import (
    Query,
    alert_rules,
    exposed_names,
    healthcheck_command,
    label_values,
    metric_names,
    queries,
    require_tool,
    source_of,
    substitute,
)
from tests.procs import Proc, adapter_dir, base_env, controller, emulator, gateway

pytestmark = pytest.mark.integration

TOKEN = "deploy-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE, EXPERIMENT = "dash-route", "dash"
SIGNALS = ("thumbs_up", "thumbs_down", "escalation", "resolved", "regenerated")
VARIABLES = {"datasource": "prometheus", "route": ROUTE, "experiment": EXPERIMENT,
             "instance": ".*", "model_name": ".*"}  # fmt: skip


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_up(self, jobs: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                active = httpx.get(self.url + "/api/v1/targets").json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                active = []
            if len(active) == jobs and all(t["health"] == "up" for t in active):
                return
            time.sleep(0.2)
        raise AssertionError(f"targets not up: {active}\n{self.log.read_text()[-3000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        return body["data"]["result"]  # type: ignore[no-any-return]

    def label_values(self, label: str, match: str | None) -> list[str]:
        params = {"match[]": match} if match else {}
        resp = httpx.get(self.url + f"/api/v1/label/{label}/values", params=params, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


def _experiment(emu: str) -> dict[str, Any]:
    return {
        "name": EXPERIMENT,
        "route": ROUTE,
        "control": {"base_url": emu + "/v1", "model": "base",
                    "prompt_price_per_million": 1.0, "completion_price_per_million": 2.0},
        "treatment": {"base_url": emu + "/v1", "model": "lora-a",
                      "prompt_price_per_million": 3.0, "completion_price_per_million": 6.0},
        "treatment_percent": 50,
        "ramp_steps": [50, 60, 100],
        "circuit_breaker": {"enabled": False},
        "detect_regenerations": False,
        "policy": {"min_units_per_arm": 5, "min_step_seconds": 3, "interval_seconds": 0.3,
                   "srm_min_units": 10, "guardrails": []},
    }  # fmt: skip


def _traffic(gw: Proc, rounds: int, pause: float) -> dict[str, int]:
    """Rounds of requests from returning and new users, each answered with feedback."""
    seen = {"requests": 0, "treatment": 0, "control": 0, "feedback": 0}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for r in range(rounds):
            users = [f"u{i}" for i in range(12)] + [f"new-{r}-{i}" for i in range(8)]
            for i, user in enumerate(users):
                body = {"model": ROUTE, "messages": [{"role": "user", "content": f"q{r}-{i}"}],
                        "max_tokens": 8, "stream": i % 2 == 0}  # fmt: skip
                resp = client.post("/v1/chat/completions", json=body,
                                   headers={"X-User-Id": user})  # fmt: skip
                resp.read()
                seen["requests"] += 1
                arm = resp.headers.get("x-abgate-arm", "")
                seen[arm] = seen.get(arm, 0) + 1
                signal = SIGNALS[(r + i) % len(SIGNALS)]
                fb = client.post(
                    "/v1/feedback",
                    json={"request_id": resp.headers["x-request-id"], "signal": signal},
                )
                seen["feedback"] += fb.status_code == 202
            # one stream per round that its client stops reading after the first chunk
            _close_after_first_chunk(client, f"closer-{r}")
            # one refused request per round: rejected requests by reason
            client.post("/v1/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"})  # fmt: skip
            time.sleep(pause)
    return seen


def _close_after_first_chunk(client: httpx.Client, user: str) -> None:
    """A user pressing "stop": the stream is closed after its first chunk (a client close)."""
    body = {"model": ROUTE, "messages": [{"role": "user", "content": "a long answer"}],
            "max_tokens": 400, "stream": True}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body,
                       headers={"X-User-Id": user}) as resp:  # fmt: skip
        next(resp.iter_raw())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("deploy-live")
    lora = adapter_dir(tmp, "lora-a")
    with (
        EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds,
        emulator(
            tmp, "--base-model", "base", "--served-model-name", "base", "--lora", f"lora-a={lora}",
            "--max-loras", "2", "--latency-ms", "5", "--ttft-ms", "3", "--seed", "7",
            "--profile", "lora-a:error_rate=0.2",
        ) as emu,
        gateway(
            tmp, {"experiments": [_experiment(emu.url)]}, rds.url, admin_token=TOKEN,
            reconcile_interval_seconds="0.5", health_interval_seconds="0.5",
        ) as gw,
        controller(tmp, rds.url, "--tick", "0.2", "--lock-ttl", "3") as ctl,
    ):  # fmt: skip
        targets = {"abgate-gateway": gw, "abgate-controller": ctl, "vllm": emu}
        prom = Prometheus(
            binary, tmp, {job: p.url.removeprefix("http://") for job, p in targets.items()}
        )
        try:
            prom.wait_up(jobs=3)
            resp = httpx.post(
                gw.url + "/admin/adapters",
                headers=AUTH,
                timeout=30,
                json={"name": "lora-a", "path": str(lora), "experiment": EXPERIMENT},
            )
            assert resp.status_code == 201 and resp.json()["state"] == "ready", resp.text
            seen = _traffic(gw, rounds=12, pause=0.6)
            time.sleep(3)  # the last scrapes
            yield {"prom": prom, "gw": gw, "ctl": ctl, "emu": emu, "seen": seen}
        finally:
            prom.stop()


def test_traffic_reached_both_arms_and_the_controller_advanced(stack: dict[str, Any]) -> None:
    seen = stack["seen"]
    assert seen["control"] > 20 and seen["treatment"] > 20 and seen["feedback"] > 100, seen
    state = httpx.get(stack["gw"].url + f"/admin/experiments/{EXPERIMENT}", headers=AUTH).json()
    assert state["state"] == "running" and state["treatment_percent"] == 60, state


@pytest.mark.parametrize("query", [q for q in queries() if q.kind != "variable"],
                         ids=lambda q: f"{q.dashboard}:{q.where}")  # fmt: skip
def test_every_dashboard_query_returns_data(stack: dict[str, Any], query: Query) -> None:
    expr = substitute(query.expr, VARIABLES)
    result = stack["prom"].query(expr)
    assert result, f"{query.where}: no data for\n{expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{query.where}: only {values} for\n{expr}"


@pytest.mark.parametrize("query", [q for q in queries() if q.kind == "variable"],
                         ids=lambda q: f"{q.dashboard}:{q.where}")  # fmt: skip
def test_every_template_variable_has_values(stack: dict[str, Any], query: Query) -> None:
    match, label = label_values(query.expr)
    found = stack["prom"].label_values(label, substitute(match, VARIABLES) if match else None)
    expected = {"route": ROUTE, "experiment": EXPERIMENT, "model_name": "base"}.get(label)
    assert found and (expected is None or expected in found), (query.where, found)


def test_every_metric_name_is_exported_by_its_process(stack: dict[str, Any]) -> None:
    pages = {
        "gateway": stack["gw"].url + "/metrics",
        "controller": stack["ctl"].url + "/metrics",
        "vllm": stack["emu"].url + "/metrics",
    }
    exported = {src: exposed_names(httpx.get(url).text) for src, url in pages.items()}
    used: dict[str, set[str]] = {}
    for q in queries():
        for name in metric_names(q.expr):
            used.setdefault(name, set()).add(f"{q.dashboard} {q.where}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    missing = {
        name: (source_of(name), sorted(where))
        for name, where in used.items()
        if name not in exported[source_of(name)]
    }
    assert missing == {}
    assert {source_of(n) for n in used} == set(pages)


def test_every_alert_expression_evaluates_on_the_live_data(stack: dict[str, Any]) -> None:
    prom = stack["prom"]
    results = {rule["alert"]: prom.query(rule["expr"]) for rule in alert_rules()}
    # the treatment fails a fifth of its requests (served by control), control never
    (firing,) = results["AbgateTreatmentErrorRateAboveControl"]
    assert firing["metric"] == {"route": ROUTE, "experiment": EXPERIMENT}
    assert 0.1 < float(firing["value"][1]) < 0.35
    # nothing else is wrong with this stack
    for quiet in ("AbgateSampleRatioMismatch", "AbgateEventsDropped",
                  "AbgateConfigVersionDivergence", "AbgateControllerLeaderMissing",
                  "AbgateAdapterNotReady"):  # fmt: skip
        assert results[quiet] == [], quiet


def test_the_image_healthcheck_command_probes_the_gateway(stack: dict[str, Any]) -> None:
    """deploy/Dockerfile's HEALTHCHECK, run as written: healthy against the running gateway,
    unhealthy against a port where nothing listens."""
    cmd = healthcheck_command()
    cmd[0] = sys.executable  # `python` in the image
    port = stack["gw"].url.rsplit(":", 1)[1]
    ok = subprocess.run(cmd, env=base_env(ABGATE_PORT=port), capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(cmd, env=base_env(ABGATE_PORT=str(free_port())), capture_output=True,
                          timeout=30)  # fmt: skip
    assert down.returncode != 0
