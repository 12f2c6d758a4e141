"""The look memory: what the always-valid tests keep from one look to the next.

The controller looks at an experiment every minute. Each look's mSPRT p-value and confidence
sequence are valid at any stopping time, so the running minimum of the p-values and the running
intersection of the intervals are valid too, and never worse (docs/statistics.md). That holds for
one confidence sequence, so its mixing scale τ must not move with the data: it is fixed at the
first look where the test has evidence and reused at every later one.

Per test (the primary metric, each guardrail: `key`) a `MetricLooks` keeps τ, the relative
lift's τ, the running minimum p-value and the intersected intervals. The memory belongs to one
treatment target (its model) since one resume: another target or a resume starts it afresh
(`current`). `decide` takes it and returns it updated in the decision; the controller stores it
in Redis next to the ramp step, and the report reads it, so that both show the same numbers.

Mixing scales (`scales`): the metric's for the primary metric (an absolute effect for rates, 10 %
of the control value for per-request means); for a guardrail on a per-request mean, its margin:
absolute, or the margin times the control value when relative. Proportion and p95 guardrails
use exact per-arm confidence sequences (analysis/guardrails.py), which need no τ and no memory.
"""

from __future__ import annotations

from analysis.guardrails import P95, evaluate
from analysis.metrics import Metric, compare, estimates, metric
from analysis.stats.sequential import METHOD
from analysis.types import (
    ExperimentSnapshot,
    GuardrailResult,
    GuardrailSpec,
    LookMemory,
    MetricComparison,
    MetricLooks,
    TestResult,
)


def key(name: str, guardrail: GuardrailSpec | None = None) -> str:
    """The memory's key of a test: the metric for the primary metric, the metric and its margin
    for a guardrail (a changed margin is another test, with another τ)."""
    if guardrail is None:
        return name
    kind = "relative" if guardrail.relative else "absolute"
    return f"guardrail:{name}:{guardrail.margin:g}:{kind}"


def current(memory: LookMemory | None, target: str, resumed_at: float) -> LookMemory:
    """`memory` while it is of this treatment target since this resume, else an empty one."""
    if memory is not None and memory.target == target and memory.resumed_at == resumed_at:
        return memory
    return LookMemory(target=target, resumed_at=resumed_at)


def scales(
    m: Metric, control_value: float, guardrail: GuardrailSpec | None = None
) -> tuple[float, float | None, bool]:
    """(τ, relative τ, whether τ depends on the control value) at this look's control value."""
    c = abs(control_value)
    if guardrail is not None and not m.proportion:
        tau = guardrail.margin * c if guardrail.relative else guardrail.margin
        depends = guardrail.relative
    else:
        tau = m.mixing_scale(control_value)
        depends = m.tau is None
    if tau <= 0:
        tau = m.mixing_scale(control_value)
    return tau, (tau / c if c > 0 else None), depends


def as_previous(entry: MetricLooks | None) -> TestResult | None:
    """The memory of a test in the form `msprt(previous=...)` takes."""
    if entry is None or entry.interval is None:
        return None
    return TestResult(
        status="ok", method=METHOD, p_value=entry.p_value, interval=entry.interval,
        relative_interval=entry.relative_interval,
    )  # fmt: skip


def _entry(memory: LookMemory, k: str, alpha: float) -> MetricLooks | None:
    """The test's memory, unless it was kept at another level (the policy's alpha changed)."""
    entry = memory.tests.get(k)
    return entry if entry is not None and entry.alpha == alpha else None


def _fixed(
    entry: MetricLooks | None, m: Metric, snapshot: ExperimentSnapshot, spec: GuardrailSpec | None
) -> tuple[float | None, float | None, bool]:
    """The test's scales: the remembered ones, else this look's (None: no control data yet)."""
    if entry is not None:
        return entry.tau, entry.relative_tau, True
    c, _ = estimates(m, snapshot.control, snapshot.treatment)
    if c is None:
        return None, None, False
    tau, rel, depends = scales(m, c.value, spec)
    return tau, rel, not (depends and c.value == 0)  # a scale of 0 × control is no scale


def _kept(
    entry: MetricLooks | None, tau: float | None, rel: float | None, ok: bool, test: TestResult
) -> MetricLooks | None:
    """The memory after this look: updated by an mSPRT result, else as it was."""
    if not ok or tau is None or test.status != "ok" or test.method != METHOD:
        return entry
    return MetricLooks(
        tau=tau, relative_tau=rel, alpha=test.alpha, p_value=test.p_value,
        interval=test.interval, relative_interval=test.relative_interval,
    )  # fmt: skip


def primary(
    snapshot: ExperimentSnapshot,
    name: str,
    memory: LookMemory,
    kept: dict[str, MetricLooks],
    *,
    alpha: float,
    min_units: int,
) -> MetricComparison:
    """The always-valid comparison on `name` with the memory; its new memory goes in `kept`."""
    entry = _entry(memory, key(name), alpha)
    tau, rel, ok = _fixed(entry, metric(name), snapshot, None)
    out = compare(
        snapshot, name, sequential=True, alpha=alpha, min_units=min_units,
        previous=as_previous(entry), tau=tau, relative_tau=rel,
    )  # fmt: skip
    new = _kept(entry, tau, rel, ok, out.test)
    if new is not None:
        kept[key(name)] = new
    return out


def guardrail(
    snapshot: ExperimentSnapshot,
    spec: GuardrailSpec,
    memory: LookMemory,
    kept: dict[str, MetricLooks],
    *,
    alpha: float,
    min_units: int,
) -> GuardrailResult:
    """A guardrail's always-valid verdict with the memory; its new memory goes in `kept`."""
    if spec.metric == P95 or metric(spec.metric).proportion:  # exact sequences, no state
        return evaluate(
            snapshot, spec.metric, spec.margin, relative=spec.relative, alpha=alpha,
            min_units=min_units,
        )  # fmt: skip
    k = key(spec.metric, spec)
    entry = _entry(memory, k, alpha)
    tau, rel, ok = _fixed(entry, metric(spec.metric), snapshot, spec)
    out = evaluate(
        snapshot, spec.metric, spec.margin, relative=spec.relative, alpha=alpha,
        min_units=min_units, previous=as_previous(entry), tau=tau, relative_tau=rel,
    )  # fmt: skip
    new = _kept(entry, tau, rel, ok, out.test)
    if new is not None:
        kept[k] = new
    return out
