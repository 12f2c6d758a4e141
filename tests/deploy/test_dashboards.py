"""The Grafana dashboards and provisioning, checked structurally (no processes)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.artifacts import (
    DEPLOY,
    alert_rules,
    dashboards,
    label_values,
    metric_names,
    panels,
    queries,
    source_of,
)

PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "timeseries", "stat", "table", "state-timeline"}
_VAR = re.compile(r"\$\{?(\w+)")
_RANGE = re.compile(r"\[([^\]]+)\]")


@pytest.fixture(scope="module")
def dashes() -> dict[str, dict[str, Any]]:
    found = dashboards()
    assert set(found) == {"experiment-overview.json", "gateway-health.json", "vllm.json"}
    return found


def test_each_dashboard_is_a_valid_model(dashes: dict[str, dict[str, Any]]) -> None:
    uids = [d["uid"] for d in dashes.values()]
    assert len(set(uids)) == len(uids)
    for name, dash in dashes.items():
        assert dash["title"].startswith("abgate / ") and "abgate" in dash["tags"], name
        assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36, name
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]), name
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), name
        cells: set[tuple[int, int]] = set()
        for panel in panels(dash):
            where = f"{name}: panel {panel['id']} {panel['title']!r}"
            assert panel["type"] in PANEL_TYPES, where
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, where
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
            assert not mine & cells, f"{where} overlaps another panel"
            cells |= mine
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == PROMETHEUS_DS, where
            assert panel["targets"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert target["datasource"] == PROMETHEUS_DS, where
                assert target["expr"].strip(), where
        for ann in dash["annotations"]["list"]:
            if ann.get("builtIn"):
                continue
            assert ann["datasource"] == PROMETHEUS_DS and ann["expr"].strip(), ann["name"]
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == PROMETHEUS_DS, var["name"]
                assert var["query"]["query"] == var["definition"], var["name"]
                label_values(var["definition"])


def test_variables_used_are_defined_and_ranges_use_grafana_intervals(
    dashes: dict[str, dict[str, Any]],
) -> None:
    for q in queries():
        defined = {v["name"] for v in dashes[q.dashboard]["templating"]["list"]}
        used = {v for v in _VAR.findall(q.expr) if not v.startswith("__")}
        assert used <= defined, (q.where, used - defined)
        ranges = set(_RANGE.findall(q.expr))
        expected = {"panel": {"$__rate_interval"}, "annotation": {"$__interval"}}.get(q.kind, set())
        assert ranges <= expected, (q.where, ranges)
        if q.kind == "panel" and re.search(r"\b(rate|increase)\(", q.expr):
            assert ranges == {"$__rate_interval"}, q.where


def test_experiment_dashboard_covers_every_signal(dashes: dict[str, dict[str, Any]]) -> None:
    dash = dashes["experiment-overview.json"]
    assert {v["name"] for v in dash["templating"]["list"]} >= {"route", "experiment"}
    exprs = " ".join(q.expr for q in queries() if q.dashboard == "experiment-overview.json")
    for needle in (
        "abgate_experiment_state", "abgate_experiment_treatment_share_ratio",
        "abgate_requests_total", "abgate_upstream_errors_total",
        "histogram_quantile(0.5, sum by (arm, le) (rate(abgate_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (arm, le) (rate(abgate_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (arm, le) (rate(abgate_time_to_first_token_seconds_bucket",
        "abgate_tokens_total", "abgate_cost_usd_total", 'signal="thumbs_up"',
        'signal="escalation"', 'signal="resolved"', 'signal="regenerated"',
        "abgate_experiment_srm_p_value",
    ):  # fmt: skip
        assert needle in exprs, needle
    annotations = {a["name"]: a for a in dash["annotations"]["list"] if "expr" in a}
    assert "abgate_controller_decisions_total" in annotations["Controller decisions"]["expr"]
    health = " ".join(q.expr for q in queries() if q.dashboard == "gateway-health.json")
    for needle in (
        "abgate_upstream_errors_total", "abgate_event_queue_depth", "abgate_events_dropped_total",
        "abgate_config_version", "abgate_redis_errors_total", "sum by (reason)",
    ):  # fmt: skip
        assert needle in health, needle
    vllm = " ".join(q.expr for q in queries() if q.dashboard == "vllm.json")
    assert "vllm:lora_requests_info" in vllm and "vllm:num_requests_waiting" in vllm


def test_every_metric_has_a_known_source() -> None:
    used = {n for q in queries() for n in metric_names(q.expr)}
    used |= {n for rule in alert_rules() for n in metric_names(rule["expr"])}
    assert {source_of(n) for n in used} == {"gateway", "controller", "vllm"}
    # nothing outside the two namespaces (e.g. `up`) that a scrape-config change could blank
    for q in queries():
        bare = re.sub(r'"[^"]*"', "", q.expr)
        assert not re.search(r"(?<![\w:$])up\b", bare), q.where


def test_provisioning_points_at_the_dashboards() -> None:
    grafana = DEPLOY / "grafana"
    ds = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((grafana / "provisioning/dashboards/abgate.yaml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
