"""PATCH is a JSON merge patch: nested objects are merged, `null` resets a member, arrays replace;
a change cannot drop redaction rules by accident, and an explicit drop is audited as such."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis

from router import keys
from tests.inprocess.conftest import Gate, GatewayFactory
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

RULES = ["emails", "phone_numbers", "credit_cards", r"ACCT-\d+"]
CAPTURE_TIMEOUT = 10.0


def seeded(emu: str) -> dict[str, Any]:
    return {"experiments": [experiment("pat-seed", "pat-seed-route", emu, 10)]}


async def create(gw: Gate, body: dict[str, Any]) -> dict[str, Any]:
    resp = await gw.admin("POST", "/experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def patch(gw: Gate, name: str, body: dict[str, Any], status: int = 200, **kw: Any) -> Any:
    resp = await gw.admin("PATCH", f"/experiments/{name}", json=body, **kw)
    assert resp.status_code == status, resp.text
    return resp.json()


async def actions(gw: Gate, name: str) -> list[str]:
    audit = await gw.admin("GET", "/audit", params={"experiment": name})
    return [e["action"] for e in reversed(audit.json()["entries"])]


def stored(rds: redis.Redis, name: str) -> dict[str, Any]:
    """The experiment as the configuration document in Redis holds it (keys unmasked)."""
    raw = rds.get(keys.CONFIG)
    assert isinstance(raw, str | bytes)
    return json.loads(raw)["experiments"][name]  # type: ignore[no-any-return]


async def captured(gw: Gate, name: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + CAPTURE_TIMEOUT
    while True:
        items = (await gw.admin("GET", f"/experiments/{name}/captures")).json()["items"]
        if len(items) >= n:
            return items  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{len(items)} of {n} captures stored in time"
        await asyncio.sleep(0.01)


async def test_patching_the_capture_rate_keeps_custom_redaction_rules(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway(seeded(emu)) as gw:
        body = experiment("pat-cap", "pat-cap-route", emu, 50,
                          capture={"rate": 0.5, "redact": RULES, "max_items": 100})  # fmt: skip
        await create(gw, body)
        after = await patch(gw, "pat-cap", {"capture": {"rate": 1.0}, "reason": "more data"},
                            headers={"If-Match": '"1"'})  # fmt: skip
        assert after["capture"] == {**body["capture"], "rate": 1.0, "retention_days": 30.0}
        assert after["version"] == 2
        assert await actions(gw, "pat-cap") == ["create", "patch"]

        # what matters: the next captures still have the account number redacted
        prompt = "ACCT-99812 is blocked, mail ana@example.com, card 4111 1111 1111 1111."
        resp = await gw.chat("pat-cap-route", "u-1", messages=[{"role": "user", "content": prompt}])
        assert resp.status_code == 200, resp.text
        (item,) = await captured(gw, "pat-cap", 1)
        assert item["input"][0]["content"] == "[REDACTED] is blocked, mail [EMAIL], card [CARD]."


async def test_dropping_redaction_rules_is_explicit_and_audited(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway(seeded(emu)) as gw:
        await create(gw, experiment("pat-drop", "pat-drop-route", emu, 10,
                                    capture={"rate": 0.1, "redact": RULES}))  # fmt: skip
        # a redact list sent replaces the current one: ACCT-\d+ and the phone rule go
        after = await patch(gw, "pat-drop", {"capture": {"redact": ["emails", "credit_cards"]},
                                             "reason": "phone numbers are needed"})  # fmt: skip
        assert after["capture"]["redact"] == ["emails", "credit_cards"]
        assert after["capture"]["rate"] == 0.1
        # adding a rule drops nothing
        await patch(gw, "pat-drop", {"capture": {"redact": ["emails", "credit_cards", "x-\\d+"]}})
        # null resets the list to the built-ins: the custom rule goes
        after = await patch(gw, "pat-drop", {"capture": {"redact": None}})
        assert after["capture"]["redact"] == ["emails", "phone_numbers", "credit_cards"]
        # switching capture off with only the built-ins drops nothing
        assert (await patch(gw, "pat-drop", {"capture": None}))["capture"] is None
        audit = (await gw.admin("GET", "/audit", params={"experiment": "pat-drop"})).json()
        # with custom rules it does: capture switched on again would start from the built-ins
        await create(gw, experiment("pat-off", "pat-off-route", emu, 10,
                                    capture={"rate": 0.1, "redact": RULES}))  # fmt: skip
        await patch(gw, "pat-off", {"capture": None})
        await patch(gw, "pat-off", {"capture": {"rate": 1.0}})
        off = (await gw.admin("GET", "/audit", params={"experiment": "pat-off"})).json()
    assert [e["action"] for e in reversed(off["entries"])] == ["create", "drop-redaction", "patch"]
    entries = list(reversed(audit["entries"]))
    assert [e["action"] for e in entries] == [
        "create", "drop-redaction", "patch", "drop-redaction", "patch",
    ]  # fmt: skip
    first = entries[1]
    assert first["reason"] == "phone numbers are needed"
    assert r"ACCT-\d+" in first["before"]["capture"]["redact"]
    assert r"ACCT-\d+" not in first["after"]["capture"]["redact"]


async def test_nested_objects_are_merged_and_null_resets_a_member(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway(seeded(emu)) as gw:
        body = experiment(
            "pat-merge", "pat-merge-route", emu, 10,
            circuit_breaker={"window": 100, "min_errors": 30, "error_ratio": 0.6},
            policy={"auto": False, "min_units_per_arm": 300,
                    "guardrails": [{"metric": "error_rate", "margin": 0.02}]},
        )  # fmt: skip
        body["treatment"]["api_key"] = "sk-treatment-secret"
        body["treatment"]["read_timeout"] = 12.5
        await create(gw, body)

        after = await patch(gw, "pat-merge", {"circuit_breaker": {"window": 200}})
        assert after["circuit_breaker"] == {"enabled": True, "window": 200, "min_errors": 30,
                                            "error_ratio": 0.6}  # fmt: skip
        after = await patch(gw, "pat-merge", {"circuit_breaker": {"min_errors": None}})
        assert after["circuit_breaker"]["min_errors"] == 20  # the default
        assert after["circuit_breaker"]["window"] == 200

        after = await patch(gw, "pat-merge", {"policy": {"min_units_per_arm": 500}})
        policy = after["policy"]
        assert policy["min_units_per_arm"] == 500 and policy["auto"] is False
        assert policy["guardrails"] == [{"metric": "error_rate", "margin": 0.02, "relative": False}]
        # an array replaces the current one whole
        guardrails = [{"metric": "latency_p95_ms", "margin": 0.5, "relative": True}]
        after = await patch(gw, "pat-merge", {"policy": {"guardrails": guardrails}})
        assert after["policy"]["guardrails"] == guardrails
        assert after["policy"]["min_units_per_arm"] == 500

        # a target is merged: its key and timeouts stay
        after = await patch(gw, "pat-merge", {"treatment": {"model": "base"}})
        assert after["treatment"]["model"] == "base" and after["treatment"]["read_timeout"] == 12.5
        assert after["treatment"]["base_url"] == emu + "/v1"
        assert stored(rds, "pat-merge")["treatment"]["api_key"] == "sk-treatment-secret"
        assert "sk-treatment-secret" not in json.dumps(after)

        # overrides are an object: merged, a unit set to null loses its override
        await patch(gw, "pat-merge", {"overrides": {"u-1": "treatment"}})
        after = await patch(gw, "pat-merge", {"overrides": {"u-2": "control"}})
        assert after["overrides"] == {"u-1": "treatment", "u-2": "control"}
        after = await patch(gw, "pat-merge", {"overrides": {"u-1": None}})
        assert after["overrides"] == {"u-2": "control"}

        # null on a top-level member resets it; on a required one it is refused
        after = await patch(gw, "pat-merge", {"policy": None, "description": None})
        assert after["policy"]["auto"] is True and after["policy"]["min_units_per_arm"] == 200
        assert after["description"] == ""
        for refused, where in (
            ({"treatment": {"base_url": None}}, "treatment"),
            ({"treatment_percent": None}, "treatment_percent"),
            ({"capture": {"rate": 5}}, "capture.rate"),
            ({"circuit_breaker": {"windw": 5}}, "circuit_breaker.windw"),
            ({"circuit_breaker": {"min_errors": 500}}, "circuit_breaker"),
        ):
            err = (await patch(gw, "pat-merge", refused, 422))["error"]
            assert err["message"].startswith(where), (refused, err)
        version = stored(rds, "pat-merge")["version"]
        assert (await gw.admin("GET", "/experiments/pat-merge")).json()["version"] == version


async def test_merge_patch_content_type_and_if_match(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway(seeded(emu)) as gw:
        await create(gw, experiment("pat-ct", "pat-ct-route", emu, 10))
        resp = await gw.admin(
            "PATCH", "/experiments/pat-ct", content=b'{"circuit_breaker": {"window": 50}}',
            headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["circuit_breaker"]["window"] == 50
        assert resp.headers["etag"] == '"2"'
        stale = await patch(gw, "pat-ct", {"capture": {"rate": 0.5}}, 412,
                            headers={"If-Match": '"1"'})  # fmt: skip
        assert "version 2" in stale["error"]["message"]
        assert (await gw.admin("GET", "/experiments/pat-ct")).json()["capture"] is None
