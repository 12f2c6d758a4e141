"""Prometheus config and alert rules through promtool: syntax, and the rules' unit tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.artifacts import ALERTS, DEPLOY, alert_rules, require_tool

pytestmark = pytest.mark.integration

PROM = DEPLOY / "prometheus"
EXPECTED_ALERTS = {
    "AbgateTreatmentErrorRateAboveControl",  # treatment error rate above control
    "AbgateTreatmentLatencyRegression",  # treatment p95 latency regression
    "AbgateSampleRatioMismatch",  # SRM flagged
    "AbgateEventsDropped",  # events dropped
    "AbgateConfigVersionDivergence",  # config version divergence between replicas
    "AbgateControllerLeaderMissing",  # controller leader missing
    "AbgateAdapterNotReady",  # vLLM adapter not loaded
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=60
    )


def test_promtool_check_config_and_rules() -> None:
    out = _promtool("check", "config", str(PROM / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout  # alerts.yml is loaded
    out = _promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    out = _promtool("test", "rules", str(PROM / "tests" / "alerts_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_test_fails_when_a_rule_breaks(tmp_path: Path) -> None:
    """The unit tests can fail: with the error-rate margin turned negative, a case that must
    stay quiet fires."""
    (tmp_path / "tests").mkdir()
    broken = ALERTS.read_text().replace(") + 0.02", ") - 0.5")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    tests = tmp_path / "tests" / "alerts_test.yml"
    tests.write_text((PROM / "tests" / "alerts_test.yml").read_text())
    out = _promtool("test", "rules", str(tests))
    assert out.returncode != 0
    assert "both arms fail alike" in out.stderr + out.stdout


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_runbook() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == EXPECTED_ALERTS
    suite = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS and quiet == EXPECTED_ALERTS
    for name, rule in rules.items():
        runbook = rule["annotations"]["runbook"]
        assert re.search(r"\babgate (rollback|report|status|audit|adapters|resume|controller)\b",
                         runbook), name  # fmt: skip
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_runbooks_name_cli_commands_that_exist() -> None:
    from typer.main import get_command

    from router.cli.main import app

    cli = get_command(app)
    commands = set(cli.commands)  # type: ignore[attr-defined]
    for rule in alert_rules():
        for cmd in re.findall(r"(?<!-n )\babgate ([a-z-]+)", rule["annotations"]["runbook"]):
            assert cmd in commands, (rule["alert"], cmd)
