"""The controller's judgement end to end, on a compressed clock: redis-server, the emulator, a
gateway and a controller as real processes, simulated users giving thumbs up or down.

Both treatments win the primary metric by the same margin (thumbs-up 80 % against 60 %):

- a *harmful* winner fails 10 % of its requests where control fails 1 %; with an error-rate
  guardrail of +1 point it must never be promoted, and is rolled back for the guardrail;
- a *harmless* winner fails no more often than control (neither fails) and is promoted.

The clock is compressed (short interval and step minimums, traffic as fast as the machine
allows); the end states are awaited with deadlines, never with sleeps. Traffic is sized with a
wide margin over what the statistics need (a few hundred requests per arm), and a run that
does not get there fails with the controller's last decisions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from router import keys
from router.demo.population import Population
from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, adapter_dir, controller, emulator, gateway

pytestmark = pytest.mark.integration

TOKEN = "judge-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARGIN = 0.01
POLICY = {
    "min_units_per_arm": 15,
    "min_step_seconds": 0.5,
    "interval_seconds": 0.3,
    "guardrails": [{"metric": "error_rate", "margin": MARGIN}],
}
#: a short ramp: one step below the last, so the traffic goes mostly to the judgement itself
RAMP = [10.0, 50.0, 100.0]
#: name -> (adapter, route); the emulator gives each adapter its quality and failure rate
ARMS = {
    "harmful": ("harmful-lora", "harmful-route"),
    "harmless": ("harmless-lora", "harmless-route"),
}
DEADLINE_S = 120.0  # far above the expected ~30 s: only a stuck run comes near it


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("judgement")
    loras: list[str] = []
    for adapter, _ in ARMS.values():
        loras += ["--lora", f"{adapter}={adapter_dir(tmp, adapter)}"]
    with (
        EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds,
        emulator(
            tmp, "--base-model", "base", "--served-model-name", "base", "clean", *loras,
            "--ttft-ms", "1", "--seed", "16",
            # control: 60 % good answers, 1 % failures ("clean": the same without failures);
            # the harmful winner fails 10 %
            "--profile", "base:quality=0.6,error_rate=0.01",
            "--profile", "clean:quality=0.6",
            "--profile", "harmful-lora:quality=0.8,error_rate=0.10",
            "--profile", "harmless-lora:quality=0.8",
        ) as emu,
        gateway(tmp, {}, rds.url, admin_token=TOKEN) as gw,
    ):  # fmt: skip
        yield {"tmp": tmp, "redis": rds, "emu": emu, "gw": gw}


def _create(gw: Proc, emu: Proc, name: str, *, control_errors: bool) -> None:
    adapter, route = ARMS[name]
    control_model = "base" if control_errors else "clean"
    body = {
        "name": name,
        "route": route,
        "treatment_percent": RAMP[0],
        "ramp_steps": RAMP,
        "control": {"base_url": emu.url + "/v1", "model": control_model},
        "treatment": {"base_url": emu.url + "/v1", "model": adapter},
        "policy": POLICY,
    }
    resp = httpx.post(gw.url + "/admin/experiments", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text


def _state(gw: Proc, name: str) -> str:
    resp = httpx.get(gw.url + f"/admin/experiments/{name}", headers=AUTH)
    return str(resp.json()["state"])


def _audit(gw: Proc, name: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        gw.url + "/admin/audit", params={"experiment": name, "limit": 500}, headers=AUTH
    )
    return [e for e in reversed(resp.json()["entries"]) if e["actor"] == "controller"]


def _rows(gw: Proc, name: str) -> dict[str, dict[str, Any]]:
    """The report's metric rows by metric name."""
    resp = httpx.get(gw.url + f"/admin/experiments/{name}/report", headers=AUTH)
    return {row["metric"]: row for row in resp.json()["metrics"]}


def _last_decisions(rds: EmbeddedRedis, name: str, n: int = 5) -> str:
    client = redis.Redis.from_url(rds.url)
    try:
        rows: list[Any] = client.xrevrange(keys.decisions(name), count=n) or []
    finally:
        client.close()
    lines = []
    for _, fields in reversed(rows):
        d = json.loads(fields[b"json"])
        lines.append(f"  {d['action']} at {d['share']:g} %, units {d['units']}: {d['reasons']}")
    return f"{name}, the controller's last {len(lines)} decisions:\n" + "\n".join(lines)


def _drive(stack: dict[str, Any], targets: dict[str, str]) -> Population:
    """Simulated users on every route whose experiment is still running, until each
    experiment is in its target state (or in another final state: the test says which)."""
    gw, rds = stack["gw"], stack["redis"]
    population = Population(gw.url, seed=16)
    deadline = time.monotonic() + DEADLINE_S
    final = ("promoted", "rolled_back", "paused")
    while True:
        states = {name: _state(gw, name) for name in targets}
        running = [ARMS[name][1] for name, s in states.items() if s not in final]
        if not running:
            return population
        if time.monotonic() > deadline:
            report = "\n".join(_last_decisions(rds, name) for name in targets)
            pytest.fail(f"end states not reached in {DEADLINE_S:.0f} s: {states}\n{report}")
        asyncio.run(population.run(running, 40, concurrency=8))


def test_harmful_winner_rolled_back_harmless_winner_promoted(stack: dict[str, Any]) -> None:
    gw, emu, rds = stack["gw"], stack["emu"], stack["redis"]
    _create(gw, emu, "harmful", control_errors=True)
    _create(gw, emu, "harmless", control_errors=False)
    started = time.monotonic()
    with controller(stack["tmp"], rds.url, "--tick", "0.1", "--lock-ttl", "2"):
        population = _drive(stack, {"harmful": "rolled_back", "harmless": "promoted"})
    wall = time.monotonic() - started
    states = {name: _state(gw, name) for name in ARMS}
    detail = "\n".join(_last_decisions(rds, name) for name in ARMS)
    assert states == {"harmful": "rolled_back", "harmless": "promoted"}, f"{states}\n{detail}"

    # the set-up is what the test says: both treatments win thumbs-up, one fails far more
    for name in ARMS:
        up = _rows(gw, name)["thumbs_up_rate"]
        assert up["treatment"] - up["control"] > 0.1, (name, up)
    errors = {name: _rows(gw, name)["error_rate"] for name in ARMS}
    assert errors["harmful"]["treatment"] - errors["harmful"]["control"] > MARGIN, errors
    assert errors["harmless"]["treatment"] == errors["harmless"]["control"] == 0, errors

    # the harmful winner: never promoted, rolled back for the guardrail and nothing else
    harmful = _audit(gw, "harmful")
    actions = [e["action"] for e in harmful]
    assert "promote" not in actions, actions
    assert actions[-1] == "rollback" and set(actions[:-1]) <= {"advance"}, actions
    assert "guardrail error_rate breached" in harmful[-1]["reason"], harmful[-1]["reason"]
    assert "significantly worse" not in harmful[-1]["reason"], harmful[-1]["reason"]

    # the harmless winner: ramped and promoted, with the guardrail shown within its margin
    harmless = _audit(gw, "harmless")
    assert [e["action"] for e in harmless] == ["advance", "promote"]
    assert [(e["before"] or {}).get("treatment_percent") for e in harmless] == RAMP[:2]
    assert "significantly better" in harmless[-1]["reason"], harmless[-1]["reason"]
    report = httpx.get(gw.url + "/admin/experiments/harmless/report", headers=AUTH).json()
    promote = [d for d in report["decisions"] if d["action"] == "promote"]
    assert len(promote) == 1
    assert [g["verdict"] for g in promote[0]["guardrails"]] == ["non_inferior"]
    print(
        f"\nend states in {wall:.1f} s; requests per (route, arm): "
        f"{dict(population.stats.requests)}; thumbs-up: {dict(population.stats.thumbs_up)}"
    )
