"""The decision policy: a pure function from the experiment's state to what to do next.

Rules, in order (the first that applies wins):

1. **pause** when the split itself is broken: the always-valid SRM test on the units that
   arrived during the current step (less those that moved between arms because the share went
   up or down) rejects at the step's part of `srm_threshold` (docs/statistics.md). Every other
   number is suspect then.
2. **rollback** when a guardrail is breached (non-inferiority test says `inferior`).
3. **rollback** when the primary metric is significantly worse (always-valid test).
4. **hold** until the step's minimums are met: new units per arm in the step, time in the step.
5. At the last ramp step below 100 %: **promote** when the primary metric is significantly better
   (or, with `promote_when: non_inferior`, when its interval excludes a loss larger than the
   margin) *and every guardrail is `non_inferior`*; otherwise **hold**.
6. Otherwise **advance** to the next ramp step.

Levels (docs/statistics.md, "The false-action budget"): the primary metric's two-sided test
runs at `policy.primary_level` (`primary_alpha`, default alpha / 2: promotions and rollbacks on
it share that), each guardrail at `alpha`.

No test acts on thin evidence: the primary metric and every guardrail are tested only once each
arm has `min_evidence_units` units with data for the metric (units that voted, for the thumbs-up
rate; analysis/metrics.py), so neither rule 2, 3 nor 5 can fire before; until then they are
`insufficient_data` and the decision is hold (or advance, which needs nothing shown worse).
Hard failures are the circuit breaker's (router/dataplane), which does not wait for evidence.
"""

from __future__ import annotations

from analysis import looks as lk
from analysis.metrics import metric
from analysis.stats.srm import srm_test
from analysis.types import (
    Decision,
    ExperimentSnapshot,
    GuardrailResult,
    LookMemory,
    MetricComparison,
    MetricLooks,
    Policy,
    SRMResult,
    StepState,
)


def decide(
    policy: Policy,
    snapshot: ExperimentSnapshot,
    step: StepState,
    now: float,
    ramp_steps: list[float],
    looks: LookMemory | None = None,
) -> Decision:
    """`looks`: the memory of the earlier looks (analysis/looks.py); the decision carries it
    updated, to be stored for the next look."""
    memory = looks or LookMemory()
    share = snapshot.treatment_percent
    c_units, t_units = snapshot.control.units.units, snapshot.treatment.units.units
    new_c, new_t, moved_t, moved_c = new_units(snapshot, step)
    step_seconds = max(0.0, now - step.started_at)
    units = {
        "control": c_units,
        "treatment": t_units,
        "control_in_step": new_c,
        "treatment_in_step": new_t,
        "moved_in_step": moved_t,
        "moved_to_control_in_step": moved_c,
    }

    def decision(action: str, *reasons: str, **extra: object) -> Decision:
        return Decision.model_validate(
            {
                "action": action,
                "reasons": list(reasons),
                "at": now,
                "share": share,
                "step_seconds": step_seconds,
                "units": units,
                "looks": memory,
                **extra,
            }
        )

    srm = srm_check(policy, new_c, new_t, share, step.index)
    if srm.mismatch:
        return decision(
            "pause",
            f"sample ratio mismatch: {new_t} of {new_c + new_t} new units in treatment "
            f"({srm.observed_share:.2%}) where {share:g} % is configured, "
            f"always-valid p = {srm.p_value:.2g} (step {srm.step})",
            srm=srm,
        )

    kept: dict[str, MetricLooks] = {}  # the memory after this look
    a, n = policy.alpha, policy.min_evidence_units
    guardrails: list[GuardrailResult] = [
        lk.guardrail(snapshot, g, memory, kept, alpha=a, min_units=n) for g in policy.guardrails
    ]
    primary = lk.primary(
        snapshot, policy.primary_metric, memory, kept, alpha=policy.primary_level, min_units=n
    )
    memory = memory.model_copy(update={"tests": kept})  # what `decision` records from here on
    common = {"srm": srm, "guardrails": guardrails, "primary": primary}
    breaches = [g for g in guardrails if g.verdict == "inferior"]
    if breaches:
        return decision(
            "rollback", *(f"guardrail {g.metric} breached: {g.reason}" for g in breaches), **common
        )
    better = _direction(policy, primary)
    if better == "worse":
        return decision(
            "rollback",
            f"{policy.primary_metric} is significantly worse: {_describe(primary)}",
            **common,
        )

    waiting = []
    if min(new_c, new_t) < policy.min_units_per_arm:
        waiting.append(
            f"{min(new_c, new_t)} of {policy.min_units_per_arm} new units per arm in this step"
        )
    if step_seconds < policy.min_step_seconds:
        waiting.append(f"{step_seconds:.0f} of {policy.min_step_seconds:.0f} s in this step")
    if waiting:
        return decision("hold", "step minimums not met: " + "; ".join(waiting), **common)

    nxt = next((s for s in ramp_steps if s > share), None)
    if nxt is None or nxt >= 100:
        # promotion needs every guardrail shown within its margin, not merely "not breached"
        unproven = [g for g in guardrails if g.verdict != "non_inferior"]
        if unproven:
            return decision(
                "hold",
                "last step: guardrails not yet shown non-inferior: "
                + "; ".join(f"{g.metric} {g.verdict} ({g.reason})" for g in unproven),
                **common,
            )
        if policy.promote_when == "better":
            if better == "better":
                return decision(
                    "promote",
                    f"{policy.primary_metric} is significantly better: {_describe(primary)}",
                    **common,
                )
            return decision(
                "hold",
                f"last step: waiting for {policy.primary_metric} to be "
                f"significantly better ({_describe(primary)})",
                **common,
            )
        if _non_inferior(policy, primary):
            return decision(
                "promote",
                f"{policy.primary_metric} is non-inferior within "
                f"{policy.non_inferiority_margin:g}: {_describe(primary)}",
                **common,
            )
        return decision(
            "hold",
            f"last step: {policy.primary_metric} not yet shown non-inferior ({_describe(primary)})",
            **common,
        )
    return decision(
        "advance",
        f"step minimums met and nothing worse; {share:g} % -> {nxt:g} % "
        f"({policy.primary_metric}: {_describe(primary)})",
        **common,
    )


def new_units(snapshot: ExperimentSnapshot, step: StepState) -> tuple[int, int, int, int]:
    """The units that arrived during the step, per arm, and those that moved: (new control,
    new treatment, moved into treatment, moved into control). A unit new to one arm but known
    to the other moved because the share changed (router/signals/lua.py counts it in the arm's
    `moved_in`): into treatment when the share went up, into control when it went down. It is
    not a new arrival, so SRM excludes it from both."""
    c, t = snapshot.control.units, snapshot.treatment.units
    moved_t = t.moved_in - step.moved_in_at_start
    moved_c = c.moved_in - step.control_moved_in_at_start
    new_c = c.units - step.control_units_at_start - moved_c
    new_t = t.units - step.treatment_units_at_start - moved_t
    return new_c, new_t, moved_t, moved_c


def srm_check(policy: Policy, new_c: int, new_t: int, share: float, step: int) -> SRMResult:
    """The always-valid SRM test of the step's new units (analysis/stats/srm.py): step `step`
    of the experiment spends `srm_threshold / (step (step + 1))`, so the chance of ever pausing
    a correct split, at any number of looks over all its steps, is below `srm_threshold`."""
    if new_c + new_t >= policy.srm_min_units:
        return srm_test(new_c, new_t, share / 100, policy.srm_threshold, step=step)
    return SRMResult(
        status="insufficient_data",
        reason="too few new units in this step",
        control_units=new_c,
        treatment_units=new_t,
        expected_share=share / 100,
        threshold=policy.srm_threshold,
        step=step,
    )


def _higher_is_better(policy: Policy) -> bool:
    if policy.higher_is_better is not None:
        return policy.higher_is_better
    return metric(policy.primary_metric).higher_is_better


def _direction(policy: Policy, primary: MetricComparison) -> str:
    test = primary.test
    if test.status != "ok" or not test.significant or test.interval is None:
        return "unknown"
    up = test.interval.low > 0
    down = test.interval.high < 0
    if not (up or down):
        return "unknown"
    return "better" if up == _higher_is_better(policy) else "worse"


def _non_inferior(policy: Policy, primary: MetricComparison) -> bool:
    test = primary.test
    if test.status != "ok" or test.interval is None:
        return False
    margin = policy.non_inferiority_margin
    if _higher_is_better(policy):
        return test.interval.low > -margin
    return test.interval.high < margin


def _describe(primary: MetricComparison) -> str:
    test = primary.test
    if test.status != "ok" or test.interval is None or primary.control is None:
        return test.reason or "no data"
    t = primary.treatment
    return (
        f"control {primary.control.value:.4g}, treatment {t.value if t else float('nan'):.4g}, "
        f"difference {test.difference:+.4g} [{test.interval.low:+.4g}, {test.interval.high:+.4g}]"
        f", always-valid p = {test.p_value:.3g}"
    )
