"""Guardrails: one-sided non-inferiority with a margin.

A guardrail metric (error rate, p95 latency, cost per request, escalation rate) may not get worse
by more than its margin. With d = treatment − control oriented so that positive is worse (the
sign is flipped for metrics where higher is better) and [lo, hi] its confidence interval
(always valid when sequential):

- `inferior` (a breach): lo > margin, the treatment is worse by more than the margin;
- `non_inferior`: hi < margin;
- `inconclusive` otherwise.

A relative margin (0.10: 10 % worse) is compared with the relative lift's interval instead.
The two-sided interval at level α makes each one-sided statement at level α/2 (conservative).
"""

from __future__ import annotations

from analysis.metrics import compare, metric
from analysis.types import ExperimentSnapshot, GuardrailResult, TestResult


def evaluate(
    snapshot: ExperimentSnapshot,
    name: str,
    margin: float,
    *,
    relative: bool = False,
    sequential: bool = True,
    alpha: float = 0.05,
    previous: TestResult | None = None,
    min_units: int = 2,
) -> GuardrailResult:
    m = metric(name)
    worse_is_higher = not m.higher_is_better
    comparison = compare(
        snapshot, name, sequential=sequential, alpha=alpha, previous=previous, min_units=min_units
    )
    test = comparison.test
    base = {"metric": name, "margin": margin, "relative": relative,
            "higher_is_worse": worse_is_higher, "test": test}  # fmt: skip
    ci = test.relative_interval if relative else test.interval
    if test.status != "ok" or ci is None:
        reason = test.reason or "no relative interval (control value is 0)"
        return GuardrailResult(verdict="insufficient_data", reason=reason, **base)
    lo, hi = (ci.low, ci.high) if worse_is_higher else (-ci.high, -ci.low)
    if lo > margin:
        verdict = "inferior"
        reason = f"worse by more than the margin: interval of the harm [{lo:.4g}, {hi:.4g}]"
    elif hi < margin:
        verdict = "non_inferior"
        reason = f"within the margin: interval of the harm [{lo:.4g}, {hi:.4g}]"
    else:
        verdict = "inconclusive"
        reason = f"interval of the harm [{lo:.4g}, {hi:.4g}] straddles the margin {margin:g}"
    return GuardrailResult(verdict=verdict, reason=reason, **base)
