"""A resume starts a new ramp step: the data that paused an experiment (a sample ratio mismatch
among the step's new units) does not pause it again the moment it is resumed."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from analysis.policy import decide
from analysis.types import ArmSnapshot, ExperimentSnapshot, Policy, UnitSums
from router.control.controller import Controller
from router.control.lifecycle import transition
from router.experiments import Experiment
from tests.procs import experiment

pytestmark = pytest.mark.asyncio


def _snapshot(control: int, treatment: int) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="resumed", route="r", treatment_percent=10, taken_at=0,
        control=ArmSnapshot(units=UnitSums(units=control)),
        treatment=ArmSnapshot(units=UnitSums(units=treatment)),
    )  # fmt: skip


async def test_resume_starts_a_new_step(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        ctl = Controller(client)
        exp = Experiment.model_validate(experiment("resumed", "r", "http://127.0.0.1:1", 10))
        first = await ctl._step(exp, 0, 0, 0, now=1000.0)
        assert first.started_at == 1000.0 and first.control_units_at_start == 0
        # a broken split: 600 of 6,600 new units in treatment where 10 % is configured
        policy = Policy(srm_min_units=100)
        broken = decide(policy, _snapshot(6000, 400), first, 1060.0, exp.ramp_steps)
        assert broken.action == "pause", broken.reasons
        same = await ctl._step(exp, 6000, 400, 0, now=1060.0)
        assert same == first  # the step goes on while nothing changes

        resumed = transition(transition(exp, "pause"), "resume")
        assert resumed.resumed_at > 0
        step = await ctl._step(resumed, 6000, 400, 0, now=1200.0)
        assert step.started_at == 1200.0
        assert (step.control_units_at_start, step.treatment_units_at_start) == (6000, 400)
        again = decide(policy, _snapshot(6000, 400), step, 1260.0, exp.ramp_steps)
        assert again.action != "pause", again.reasons
        assert again.srm is not None and again.srm.status == "insufficient_data"
        # and the step is kept from then on
        assert await ctl._step(resumed, 6090, 410, 0, now=1300.0) == step
    finally:
        await client.aclose()


async def test_a_share_decrease_starts_a_step_that_knows_the_units_moved_into_control(
    redis_url: str,
) -> None:
    """25 % -> 10 % through PATCH or set-share: the new step records the units that had moved
    into control so far (the gateway's control `moved_in`), and its number, which sets its part
    of the SRM threshold; a resume is one more step."""
    client = aioredis.from_url(redis_url)
    try:
        ctl = Controller(client)
        exp = Experiment.model_validate(experiment("shrink", "r", "http://127.0.0.1:1", 25))
        first = await ctl._step(exp, 0, 0, 0, now=1000.0)
        assert first.index == 1
        down = exp.model_copy(update={"treatment_percent": 10.0})
        step = await ctl._step(down, 3000, 1000, 200, now=2000.0, control_moved=40)
        assert step.index == 2 and step.share == 10.0
        assert (step.moved_in_at_start, step.control_moved_in_at_start) == (200, 40)
        resumed = transition(transition(down, "pause"), "resume")
        assert (await ctl._step(resumed, 3100, 1010, 200, now=3000.0)).index == 3
    finally:
        await client.aclose()


async def test_a_treatment_swap_starts_a_new_step(redis_url: str) -> None:
    """A new adapter at the same share is a new period (the store bumps it): the controller's
    step ends, and the next one starts at the unit counts of the swap."""
    client = aioredis.from_url(redis_url)
    try:
        ctl = Controller(client)
        exp = Experiment.model_validate(experiment("swapped", "r", "http://127.0.0.1:1", 10))
        first = await ctl._step(exp, 0, 0, 0, now=1000.0)
        assert await ctl._step(exp, 900, 100, 0, now=1500.0) == first
        swapped = exp.model_copy(update={
            "treatment": exp.treatment.model_copy(update={"model": "adapter-2"}),
            "period": exp.period + 1,
        })  # fmt: skip
        step = await ctl._step(swapped, 1800, 200, 0, now=2000.0)
        assert (step.index, step.period, step.started_at) == (2, 1, 2000.0)
        assert (step.control_units_at_start, step.treatment_units_at_start) == (1800, 200)
    finally:
        await client.aclose()
