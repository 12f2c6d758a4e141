"""The controller's first look at an experiment (no stored step) counts every unit only when the
share never changed; after a manual ramp (set-share 20 -> 25 -> 30, advance to 50) the units so
far arrived under other shares, and testing them against 50 % would pause correct traffic. The
report applies the same rule (analysis/steps.py)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from analysis.steps import next_step, share_changed
from analysis.types import StepState
from router import keys
from router.control.changes import apply_change
from router.control.controller import Controller, read_step
from router.control.lifecycle import transition
from router.experiments import Experiment
from tests.procs import experiment


def _entry(before: float | None, after: float) -> dict[str, Any]:
    return {
        "before": None if before is None else {"treatment_percent": before},
        "after": {"treatment_percent": after},
    }


def test_share_changed_ignores_creation_and_other_fields() -> None:
    assert not share_changed([_entry(None, 20), _entry(20, 20)])
    assert share_changed([_entry(None, 20), _entry(20, 25)])
    assert not share_changed([])


def test_next_step() -> None:
    kw: dict[str, Any] = {"control_units": 800, "treatment_units": 200, "moved_in": 3, "now": 9.0}
    first = next_step(None, share=20, resumed_at=0.0, **kw)
    assert (first.control_units_at_start, first.treatment_units_at_start) == (0, 0)
    after_change = next_step(None, share=50, resumed_at=0.0, changed=True, **kw)
    assert (after_change.control_units_at_start, after_change.moved_in_at_start) == (800, 3)
    resumed = next_step(None, share=20, resumed_at=5.0, **kw)
    assert resumed.treatment_units_at_start == 200
    kept = StepState(share=20, started_at=1.0)
    assert next_step(kept, share=20, resumed_at=0.0, **kw) is kept
    assert next_step(kept, share=25, resumed_at=0.0, **kw).control_units_at_start == 800


@pytest.mark.asyncio
async def test_first_look_after_a_manual_ramp_starts_at_the_current_counts(
    aredis: aioredis.Redis,
) -> None:
    ctl = Controller(aredis)

    async def change(action: str, fn: Any) -> Experiment:
        doc = await apply_change(ctl.store, "ramped", fn, actor="alice", action=action, reason="")
        return doc.experiments["ramped"]

    exp = await change(
        "create",
        lambda _c, _e: Experiment.model_validate(experiment("ramped", "r", "http://x:1", 20)),
    )
    untouched = await ctl._step(exp, 800, 200, 0, now=1000.0)
    assert untouched.control_units_at_start == 0  # every unit arrived under 20 %
    await aredis.delete(keys.controller_step("ramped"))
    assert await read_step(aredis, "ramped") is None

    for share in (25.0, 30.0):
        exp = await change(
            "set-share", lambda c, _e, s=share: c.model_copy(update={"treatment_percent": s})
        )
    exp = await change("advance", lambda c, _e: transition(c, "advance"))
    assert exp.treatment_percent == 50
    step = await ctl._step(exp, 2750, 1250, 40, now=2000.0)
    assert (step.control_units_at_start, step.treatment_units_at_start) == (2750, 1250)
    assert step.moved_in_at_start == 40 and step.share == 50
    assert await read_step(aredis, "ramped") == step
