"""End to end on a compressed clock: redis-server, emulator, gateway, controller and a simulated
population. A better treatment is ramped and promoted, a worse one rolled back, a broken one cut
off by the circuit breaker without client errors, a broken split paused; two controllers elect
one leader and hand over when it dies."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.demo.population import Population
from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import CHROMIUM_FLAGS, Proc, adapter_dir, controller, emulator, gateway

pytestmark = pytest.mark.integration

TOKEN = "ctl-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {
    "min_units_per_arm": 15,
    "min_step_seconds": 0.5,
    "interval_seconds": 0.3,
    "srm_min_units": 60,
    "guardrails": [{"metric": "error_rate", "margin": 0.05}],
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ctl")
    loras = []
    for name in ("good", "bad", "broken"):
        loras += ["--lora", f"{name}={adapter_dir(tmp, name)}"]
    with (
        EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds,
        emulator(
            tmp,
            "--base-model",
            "base",
            *loras,
            "--quality",
            "0.55",
            "--profile",
            "good:quality=0.9",
            "--profile",
            "bad:quality=0.25",
            "--profile",
            "broken:error_rate=1.0",
        ) as emu,
        gateway(tmp, {}, rds.url, admin_token=TOKEN) as gw,
    ):
        yield {"tmp": tmp, "redis": rds, "emu": emu, "gw": gw}


def create(
    gw: Proc, emu: Proc, name: str, treatment: str, percent: float = 5, **extra: Any
) -> None:
    body = {
        "name": name,
        "route": f"{name}-route",
        "treatment_percent": percent,
        "control": {"base_url": emu.url + "/v1", "model": "base"},
        "treatment": {"base_url": emu.url + "/v1", "model": treatment},
        "policy": {**FAST, **extra.pop("policy", {})},
        **extra,
    }
    resp = httpx.post(gw.url + "/admin/experiments", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text


def state(gw: Proc, name: str) -> dict[str, Any]:
    return httpx.get(gw.url + f"/admin/experiments/{name}", headers=AUTH).json()  # type: ignore[no-any-return]


def audit(gw: Proc, name: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        gw.url + "/admin/audit", params={"experiment": name, "limit": 500}, headers=AUTH
    )
    return list(reversed(resp.json()["entries"]))


def drive(
    gw: Proc, routes: list[str], until: Any, timeout: float = 90.0, batch: int = 60
) -> Population:
    population = Population(gw.url, seed=len(routes))
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the controller did not get there in time"
        asyncio.run(population.run(routes, batch, concurrency=8))
    return population


def test_better_is_promoted_worse_rolled_back_broken_cut_off(system: dict[str, Any]) -> None:
    gw, emu, tmp, rds = system["gw"], system["emu"], system["tmp"], system["redis"]
    create(gw, emu, "better", "good")
    create(gw, emu, "worse", "bad", percent=25)
    create(gw, emu, "broken", "broken", percent=25, policy={"auto": False})
    with controller(tmp, rds.url, "--tick", "0.2", "--lock-ttl", "2"):
        population = drive(
            gw,
            ["better-route", "worse-route", "broken-route"],
            lambda: (
                state(gw, "better")["state"] == "promoted"
                and state(gw, "worse")["state"] == "rolled_back"
            ),
        )
    # no client ever saw an error: broken treatment requests were served by control
    assert population.stats.errors == []
    assert population.stats.fallbacks > 0

    steps = [
        (e["before"] or {}).get("treatment_percent")
        for e in audit(gw, "better")
        if e["actor"] == "controller"
    ]
    actions = [e["action"] for e in audit(gw, "better") if e["actor"] == "controller"]
    assert actions == ["advance", "advance", "advance", "promote"], actions
    assert steps == [5, 10, 25, 50]
    assert state(gw, "better")["treatment_percent"] == 100

    worse = [e for e in audit(gw, "worse") if e["actor"] == "controller"]
    # it may advance while the evidence is still thin; it ends rolled back for being worse
    assert [e["action"] for e in worse][-1] == "rollback"
    assert set(e["action"] for e in worse[:-1]) <= {"advance"}
    assert "significantly worse" in worse[-1]["reason"]

    broken = audit(gw, "broken")
    assert broken[-1]["actor"] == "circuit-breaker" and broken[-1]["action"] == "rollback"
    assert "circuit breaker" in broken[-1]["reason"]
    assert state(gw, "broken")["state"] == "rolled_back"

    # the report explains it
    report = httpx.get(gw.url + "/admin/experiments/better/report", headers=AUTH).json()
    primary = report["metrics"][0]
    assert primary["metric"] == "thumbs_up_rate" and primary["verdict"] == "better"
    assert [d["action"] for d in report["decisions"]] == actions
    assert report["series"]


def test_forced_srm_pauses(system: dict[str, Any]) -> None:
    gw, emu, tmp, rds = system["gw"], system["emu"], system["tmp"], system["redis"]
    # a third of the simulated users are forced into control: the split is broken
    overrides = {f"sim-{i:06d}": "control" for i in range(0, 3000, 3)}
    create(gw, emu, "skewed", "base", percent=50, overrides=overrides)  # no effect: no promotion
    with controller(tmp, rds.url, "--tick", "0.2", "--lock-ttl", "2"):
        drive(gw, ["skewed-route"], lambda: state(gw, "skewed")["state"] == "paused")
    entry = audit(gw, "skewed")[-1]
    assert entry["actor"] == "controller" and entry["action"] == "pause"
    assert "sample ratio mismatch" in entry["reason"]


def _leader(proc: Proc) -> bool:
    text = httpx.get(proc.url + "/metrics").text
    return "abgate_controller_leader 1.0" in text


def test_one_leader_and_handover(system: dict[str, Any]) -> None:
    gw, emu, tmp, rds = system["gw"], system["emu"], system["tmp"], system["redis"]
    create(gw, emu, "handover", "good", policy={"min_step_seconds": 1.5})
    with (
        controller(tmp, rds.url, "--tick", "0.2", "--lock-ttl", "2") as a,
        controller(tmp, rds.url, "--tick", "0.2", "--lock-ttl", "2") as b,
    ):
        deadline = time.monotonic() + 5
        while not (_leader(a) or _leader(b)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        leaders = [p for p in (a, b) if _leader(p)]
        assert len(leaders) == 1
        leader, standby = leaders[0], (b if leaders[0] is a else a)
        drive(gw, ["handover-route"], lambda: state(gw, "handover")["treatment_percent"] >= 10)
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        killed = time.monotonic()
        while not _leader(standby):
            assert time.monotonic() - killed < 2 + 1.0, "no handover within one lock TTL"
            time.sleep(0.05)
        drive(gw, ["handover-route"], lambda: state(gw, "handover")["state"] == "promoted")
    entries = [e for e in audit(gw, "handover") if e["actor"] == "controller"]
    transitions = [((e["before"] or {}).get("treatment_percent"), e["action"]) for e in entries]
    assert len(transitions) == len(set(transitions)), transitions  # nothing applied twice
    assert [a for _, a in transitions] == ["advance", "advance", "advance", "promote"]


def _count_near(img: Any, rgb: tuple[int, int, int], tol: int = 40) -> int:
    import numpy as np

    pixels = np.asarray(img, dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb, dtype=np.int16)) < tol).all(axis=-1).sum())


def test_html_report_renders_with_charts(system: dict[str, Any], tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    from PIL import Image

    from tests.procs import ROOT, base_env

    gw = system["gw"]
    if httpx.get(gw.url + "/admin/experiments/better", headers=AUTH).status_code != 200:
        pytest.skip("runs after the end-to-end test that creates the 'better' experiment")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    page = tmp_path / "report.html"
    out = subprocess.run(
        [sys.executable, "-m", "router", "report", "better", "--url", gw.url, "--token", TOKEN,
         "--html", str(page)],
        env=base_env(COLUMNS="200"), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "thumbs_up_rate" in out.stdout and "better" in out.stdout
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace(gw.url, "")  # offline
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.exists(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    # every chart drew its series: the share line, both arms, the interval band
    assert _count_near(img, (0x2C, 0xA0, 0x2C)) > 300  # share (green)
    assert _count_near(img, (0x1F, 0x77, 0xB4)) > 300  # control (blue)
    assert _count_near(img, (0xD6, 0x27, 0x28)) > 300  # treatment (red)
    assert _count_near(img, (0xFD, 0xCB, 0x9C), tol=25) > 300  # interval band (orange, 35 %)
