"""The store starts a new period of an experiment, in the transaction of the change, whenever
its treatment share or an arm's target changes or it is resumed, and records it
(router/control/periods.py); other changes keep the period, and clients cannot set it."""

from __future__ import annotations

import redis.asyncio as aioredis

from router.control.changes import apply_change
from router.control.lifecycle import ExperimentPatch, bump, patch, transition
from router.control.periods import read_periods
from router.control.store import ConfigStore, read_audit
from router.experiments import Experiment

TARGET = {"base_url": "http://127.0.0.1:1/v1", "model": "base"}


def _exp() -> Experiment:
    return Experiment.model_validate({
        "name": "per", "route": "r", "control": TARGET, "treatment": TARGET | {"model": "a1"},
        "treatment_percent": 5.0,
    })  # fmt: skip


async def test_changes_that_start_a_period(aredis: aioredis.Redis) -> None:
    store = ConfigStore(aredis)

    async def change(fn, action: str = "patch") -> Experiment:  # type: ignore[no-untyped-def]
        doc = await apply_change(store, "per", fn, actor="t", action=action, reason="")
        return doc.experiments["per"]

    exp = await change(lambda cur, _: _exp(), "create")
    assert exp.period == 0
    exp = await change(lambda cur, _: transition(cur, "advance"), "advance")
    assert (exp.period, exp.treatment_percent, exp.target_period) == (1, 10.0, 0)
    exp = await change(lambda cur, _: patch(cur, ExperimentPatch(description="x")))
    assert exp.period == 1  # nothing the estimates depend on changed
    swap = ExperimentPatch(treatment={"model": "a2"})
    exp = await change(lambda cur, _: patch(cur, swap))
    assert (exp.period, exp.treatment.model) == (2, "a2")
    assert exp.target_period == 2  # the tests judge a2 on periods 2 and later
    exp = await change(lambda cur, _: transition(cur, "pause"), "pause")
    assert exp.period == 2
    exp = await change(lambda cur, _: transition(cur, "resume"), "resume")
    assert (exp.period, exp.target_period) == (3, 2)
    # a client's copy with another period does not set it
    exp = await change(lambda cur, _: bump(cur, period=99, target_period=0, description="y"))
    assert (exp.period, exp.target_period) == (3, 2)
    rows = await read_periods(aredis, "per")
    assert [r["period"] for r in rows] == [0, 1, 2, 3]
    assert [(r["share"], r["treatment"]) for r in rows] == [
        (5.0, "a1"), (10.0, "a1"), (10.0, "a2"), (10.0, "a2")]  # fmt: skip
    assert rows[0]["started_at"] <= rows[-1]["started_at"]
    audit = await read_audit(aredis, "per")
    assert audit[0]["after"]["period"] == 3


async def test_a_new_namesake_starts_again_at_period_0(aredis: aioredis.Redis) -> None:
    store = ConfigStore(aredis)
    await apply_change(store, "per", lambda c, _: _exp(), actor="t", action="create", reason="")
    await apply_change(store, "per", lambda c, _: transition(c, "advance"), actor="t",
                       action="advance", reason="")  # fmt: skip
    await apply_change(store, "per", lambda c, _: None, actor="t", action="delete", reason="")
    doc = await apply_change(store, "per", lambda c, _: _exp().model_copy(update={"period": 4}),
                             actor="t", action="create", reason="")  # fmt: skip
    assert doc.experiments["per"].period == 0
    assert [r["period"] for r in await read_periods(aredis, "per")] == [0]
