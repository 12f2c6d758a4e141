"""`abgate capture` and `abgate policy` against a real gateway process and Redis: a change keeps
what it does not name, removing redaction rules is audited as such, and a change made
meanwhile by someone else is refused rather than overwritten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from router.cli import configure
from router.cli.client import AdminClient
from router.cli.main import app
from router.experiments import Capture
from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, experiment, gateway

TOKEN = "configure-cli-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPSTREAM = "http://127.0.0.1:9"  # nothing is proxied here: the admin API alone is used
RULES = ["emails", "phone_numbers", "credit_cards", r"ACCT-\d+"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("configure")
    with gateway(tmp, {}, redis_server.url, admin_token=TOKEN) as proc:
        yield proc


def abgate(gw: Proc, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--url", gw.url, "--token", TOKEN])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def api(gw: Proc, method: str, path: str, **kw: Any) -> Any:
    resp = httpx.request(method, gw.url + "/admin" + path, headers=AUTH, timeout=10, **kw)
    assert resp.is_success, resp.text
    return resp.json()


def create(gw: Proc, name: str, **extra: Any) -> dict[str, Any]:
    body = experiment(name, name + "-route", UPSTREAM, 10, state="draft", **extra)
    return api(gw, "POST", "/experiments", json=body)  # type: ignore[no-any-return]


def actions(gw: Proc, name: str) -> list[str]:
    entries = api(gw, "GET", "/audit", params={"experiment": name})["entries"]
    return [e["action"] for e in reversed(entries)]


def test_the_cli_default_rules_are_the_capture_default() -> None:
    assert list(configure.DEFAULT_REDACT) == Capture(rate=0.1).redact


def test_capture_set_keeps_the_rules_it_does_not_name(gw: Proc) -> None:
    create(gw, "cc-keep", capture={"rate": 0.05, "redact": RULES})
    out = abgate(gw, "capture", "set", "cc-keep", "--rate", "1", "--max-items", "500")
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == (
        "cc-keep: capture rate 0.05 -> 1; max_items 10000 -> 500 (version 1 -> 2)"
    )
    cap = api(gw, "GET", "/experiments/cc-keep")["capture"]
    assert cap == {"rate": 1.0, "redact": RULES, "max_items": 500, "retention_days": 30.0}

    shown = abgate(gw, "capture", "show", "cc-keep")
    assert shown.exit_code == 0, shown.output
    assert r"emails, phone_numbers, credit_cards, ACCT-\d+" in shown.stdout
    assert "rate             1" in shown.stdout
    as_json = json.loads(abgate(gw, "capture", "show", "cc-keep", "--json").stdout)
    assert as_json == {"name": "cc-keep", "version": 2, "capture": cap}
    assert actions(gw, "cc-keep") == ["create", "patch"]


def test_removing_a_rule_is_explicit_and_audited(gw: Proc) -> None:
    create(gw, "cc-drop", capture={"rate": 0.1, "redact": RULES})
    out = abgate(gw, "capture", "set", "cc-drop", "--add-redact", r"ORD-\d+",
                 "--remove-redact", r"ACCT-\d+", "--reason", "account ids are public")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "redact + ORD-\\d+; redact - ACCT-\\d+ (audited as drop-redaction)" in out.stdout
    cap = api(gw, "GET", "/experiments/cc-drop")["capture"]
    assert cap["redact"] == ["emails", "phone_numbers", "credit_cards", r"ORD-\d+"]
    assert actions(gw, "cc-drop") == ["create", "drop-redaction"]
    # adding alone drops nothing
    assert abgate(gw, "capture", "set", "cc-drop", "--add-redact", "x-\\d+").exit_code == 0
    assert actions(gw, "cc-drop")[-1] == "patch"
    # a rule that is not there is a usage error, before any change
    bad = abgate(gw, "capture", "set", "cc-drop", "--remove-redact", "nope")
    assert bad.exit_code == 2 and "'nope' is not one of the rules" in bad.stderr
    # the gateway validates the rules
    invalid = abgate(gw, "capture", "set", "cc-drop", "--add-redact", "((")
    assert invalid.exit_code == 1 and "422" in invalid.stderr and "capture.redact" in invalid.stderr
    assert len(actions(gw, "cc-drop")) == 3


def test_capture_off_and_on_again(gw: Proc) -> None:
    create(gw, "cc-off", capture={"rate": 0.1})
    out = abgate(gw, "capture", "off", "cc-off", "--reason", "enough data")
    assert out.exit_code == 0 and "cc-off: capture off (version 1 -> 2)" in out.stdout
    assert api(gw, "GET", "/experiments/cc-off")["capture"] is None
    assert "already off" in abgate(gw, "capture", "off", "cc-off").stdout
    assert "off: nothing is captured" in abgate(gw, "capture", "show", "cc-off").stdout
    refused = abgate(gw, "capture", "set", "cc-off", "--max-items", "5")
    assert refused.exit_code == 2 and "pass --rate to switch it on" in refused.stderr
    on = abgate(gw, "capture", "set", "cc-off", "--rate", "0.2", "--add-redact", r"ACCT-\d+")
    assert on.exit_code == 0, on.output
    assert "capture on: rate 0.2, max_items 10000, retention_days 30" in on.stdout
    cap = api(gw, "GET", "/experiments/cc-off")["capture"]
    assert cap["redact"] == RULES  # the built-ins, and the rule added
    assert actions(gw, "cc-off") == ["create", "patch", "patch"]


def test_policy_show_and_set(gw: Proc) -> None:
    create(gw, "cc-pol", policy={"min_units_per_arm": 300, "alpha": 0.01})
    shown = abgate(gw, "policy", "show", "cc-pol")
    assert shown.exit_code == 0, shown.output
    assert "min_units_per_arm        300" in shown.stdout
    assert "guardrails               error_rate:0.01, latency_p95_ms:0.25:relative" in shown.stdout
    assert "ramp_steps               5, 10, 25, 50, 100 %" in shown.stdout
    assert "primary_alpha            (alpha / 2)" in shown.stdout

    out = abgate(gw, "policy", "set", "cc-pol", "--no-auto", "--min-units-per-arm", "500",
                 "--guardrail", "latency_p95_ms:0.5:relative",
                 "--guardrail", "ttft_ms:0.3:relative",
                 "--remove-guardrail", "escalation_rate", "--ramp", "10,50,100",
                 "--primary-alpha", "0.005")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "primary_alpha (alpha / 2) -> 0.005" in out.stdout
    assert "auto yes -> no" in out.stdout and "min_units_per_arm 300 -> 500" in out.stdout
    assert "ramp_steps 5, 10, 25, 50, 100 % -> 10, 50, 100 %" in out.stdout
    exp = api(gw, "GET", "/experiments/cc-pol")
    policy = exp["policy"]
    assert policy["auto"] is False and policy["min_units_per_arm"] == 500
    assert policy["alpha"] == 0.01  # not named, kept
    assert policy["primary_alpha"] == 0.005
    assert [(g["metric"], g["margin"], g["relative"]) for g in policy["guardrails"]] == [
        ("error_rate", 0.01, False), ("latency_p95_ms", 0.5, True),
        ("cost_per_request", 0.25, True), ("ttft_ms", 0.3, True),
    ]  # fmt: skip
    assert exp["ramp_steps"] == [10, 50, 100]
    as_json = json.loads(abgate(gw, "policy", "show", "cc-pol", "--json").stdout)
    assert as_json["policy"] == policy and as_json["ramp_steps"] == [10, 50, 100]

    for args, needle in (
        ([], "nothing to change"),
        (["--guardrail", "error_rate"], "write METRIC:MARGIN"),
        (["--ramp", "5,ten"], "--ramp takes percentages"),
        (["--remove-guardrail", "nope"], "no such guardrail"),
    ):
        bad = abgate(gw, "policy", "set", "cc-pol", *args)
        assert bad.exit_code == 2 and needle in bad.stderr, (args, bad.output)
    refused = abgate(gw, "policy", "set", "cc-pol", "--ramp", "50,10")
    assert refused.exit_code == 1 and "422" in refused.stderr and "ramp_steps" in refused.stderr


def test_a_change_made_meanwhile_is_refused_not_overwritten(
    gw: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(gw, "cc-race", capture={"rate": 0.1, "redact": RULES})
    real = AdminClient.call

    def call(self: AdminClient, method: str, path: str, **kw: Any) -> Any:
        if method == "PATCH":  # someone else changes the experiment after the CLI read it
            api(gw, "PATCH", "/experiments/cc-race", json={"description": "someone else"})
        return real(self, method, path, **kw)

    monkeypatch.setattr(AdminClient, "call", call)
    out = abgate(gw, "capture", "set", "cc-race", "--rate", "1")
    assert out.exit_code == 1 and "412" in out.stderr, out.output
    exp = api(gw, "GET", "/experiments/cc-race")
    assert exp["capture"]["rate"] == 0.1 and exp["description"] == "someone else"


def test_unknown_experiment(gw: Proc) -> None:
    for command in ("capture", "policy"):
        out = abgate(gw, command, "show", "no-such-experiment")
        assert out.exit_code == 1 and "404" in out.stderr
