"""The ramp step: which units the step-level checks (SRM, the per-step minimums) look at.

One rule for the controller (router/control/controller.py, which keeps the step in Redis) and
the report (analysis/report.py, which reads it): the stored step holds while the share, the
experiment's `resumed_at` and its period (router/experiments.py: bumped by every change of the
share or the treatment target, and by a resume) are those it started with; a share change, a
treatment swap or a resume starts a new step at the unit counts of that moment, so its SRM
tests only the units that arrive afterwards against the share they were assigned under.
"""

from __future__ import annotations

from typing import Any

from analysis.types import StepState


def is_current(stored: StepState, share: float, resumed_at: float, period: int = 0) -> bool:
    """Whether `stored` is still the experiment's step. A step stored before periods existed
    (period 0) stays current in the experiment's first period only."""
    return stored.share == share and stored.resumed_at == resumed_at and stored.period == period


def next_step(
    stored: StepState | None,
    *,
    share: float,
    resumed_at: float,
    control_units: int,
    treatment_units: int,
    moved_in: int,
    now: float,
    control_moved_in: int = 0,
    changed: bool = False,
    period: int = 0,
) -> StepState:
    """The step the controller evaluates at `now`: `stored` when it is current, otherwise a new
    one starting now at the current unit counts. Without a stored step (the experiment's first
    evaluation) it starts from zero, every unit so far, unless the share has `changed` since the
    experiment began or it was resumed: then which units arrived under the current share is
    unknown, and the step starts at the current counts as after a change. Steps are numbered
    from 1, one more for each new step (the SRM check spends its threshold over them); without
    a stored step the count starts again at 1."""
    if stored is not None and is_current(stored, share, resumed_at, period):
        return stored
    fresh = stored is not None or changed or resumed_at != 0.0 or period != 0
    return StepState(
        share=share,
        started_at=now,
        control_units_at_start=control_units if fresh else 0,
        treatment_units_at_start=treatment_units if fresh else 0,
        moved_in_at_start=moved_in if fresh else 0,
        control_moved_in_at_start=control_moved_in if fresh else 0,
        index=stored.index + 1 if stored is not None else 1,
        resumed_at=resumed_at,
        period=period,
    )


def share_changed(audit: list[dict[str, Any]]) -> bool:
    """Whether the audit entries of one experiment record a change of its treatment share (a
    set-share, PATCH, advance, decision, rollback or promote; not its creation)."""
    for a in audit:
        before, after = a.get("before"), a.get("after")
        if (
            isinstance(before, dict)
            and isinstance(after, dict)
            and before.get("treatment_percent") != after.get("treatment_percent")
        ):
            return True
    return False
