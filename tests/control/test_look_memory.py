"""The controller keeps the look memory in Redis (analysis/looks.py): a later, weaker look keeps
the running minimum p-value and the intersected interval; a swap of the treatment or a resume
starts the memory afresh; the report shows the numbers the controller acted on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from analysis.report import build_report
from analysis.types import ArmSnapshot, Decision, ExperimentSnapshot, UnitSums
from router import keys
from router.control import controller as ctl_mod
from router.control.changes import apply_change
from router.control.controller import Controller, read_looks, read_step
from router.control.lifecycle import transition
from router.experiments import Experiment
from tests.procs import experiment

POLICY = {"primary_metric": "latency_ms", "guardrails": [], "min_step_seconds": 1e9}


def _arm(rng: np.random.Generator, units: int, latency: float) -> ArmSnapshot:
    n = (1 + rng.poisson(3, units)).astype(float)
    y = n * latency * rng.lognormal(0, 0.3, units)
    return ArmSnapshot(
        units=UnitSums(
            units=units, s1={"requests": n.sum(), "latency_ms": y.sum()},
            s2={"requests": float(n @ n), "latency_ms": float(y @ y)},
            cross={"latency_ms|requests": float(y @ n)}, nonzero={"requests": units},
        )
    )  # fmt: skip


def _snap(rng: np.random.Generator, treatment_latency: float) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="looked", route="r", treatment_percent=50.0, taken_at=0.0,
        control=_arm(rng, 400, 200.0), treatment=_arm(rng, 400, treatment_latency),
    )  # fmt: skip


@pytest.mark.asyncio
async def test_the_controller_keeps_the_look_memory(
    aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    snaps = [_snap(rng, 185.0), _snap(rng, 193.0)]
    queue = list(snaps) + [snaps[1]] * 2

    async def fake_read(_redis: Any, _exp: Any, **_kw: Any) -> ExperimentSnapshot:
        return queue.pop(0)

    monkeypatch.setattr(ctl_mod, "read_snapshot", fake_read)
    ctl = Controller(aredis)
    spec = experiment("looked", "r", "http://x:1", 50, policy=POLICY)
    doc = await apply_change(
        ctl.store, "looked", lambda _c, _e: Experiment.model_validate(spec),
        actor="alice", action="create", reason="",
    )  # fmt: skip
    exp = doc.experiments["looked"]

    async def look(e: Experiment, now: float) -> Decision:
        d = await ctl.evaluate(e, now)
        assert d is not None and d.action == "hold" and d.primary is not None
        return d

    one = await look(exp, 1000.0)
    stored = await read_looks(aredis, "looked")
    assert stored is not None and stored == one.looks and stored.target == "lora-a"
    assert await aredis.ttl(keys.controller_looks("looked")) > 0
    two = await look(exp, 1100.0)
    p1, p2 = one.primary.test.p_value, two.primary.test.p_value  # type: ignore[union-attr]
    assert p1 is not None and p2 == p1  # the weaker look keeps the running minimum
    i1, i2 = one.primary.test.interval, two.primary.test.interval  # type: ignore[union-attr]
    assert i1 is not None and i2 is not None and i1.low <= i2.low <= i2.high <= i1.high

    # the report reads the same memory: it shows what the controller acted on
    shown = build_report(
        exp.model_dump(mode="json"), snaps[1], [], [], 1100.0,
        await read_step(aredis, "looked"), await read_looks(aredis, "looked"),
    )  # fmt: skip
    row = next(r for r in shown.metrics if r.role == "primary")
    assert row.always_valid_p == p2 and row.always_valid == i2
    alone = build_report(exp.model_dump(mode="json"), snaps[1], [], [], 1100.0)
    assert next(r for r in alone.metrics if r.role == "primary").always_valid_p != p2

    # a swap of the treatment's model: the memory starts again (this look alone)
    swapped = exp.model_copy(update={"treatment": exp.treatment.model_copy(update={"model": "b"})})
    three = await look(swapped, 1200.0)
    assert three.primary is not None and three.primary.test.p_value is not None
    assert three.primary.test.p_value > p1
    assert (await read_looks(aredis, "looked")).target == "b"  # type: ignore[union-attr]
    # a resume starts it again too
    resumed = transition(transition(swapped, "pause"), "resume")
    four = await look(resumed, 1300.0)
    assert four.looks is not None and four.looks.resumed_at == resumed.resumed_at > 0
    assert four.primary is not None and four.primary.test.p_value == three.primary.test.p_value
