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
from analysis.stats._util import insufficient
from analysis.stats.quantiles import latency_quantile
from analysis.types import ExperimentSnapshot, GuardrailResult, TestResult

P95 = "latency_p95_ms"


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
    tau: float | None = None,
    relative_tau: float | None = None,
) -> GuardrailResult:
    """`tau`: the mixing scale of a per-request mean's always-valid test (a proportion keeps its
    metric's), `relative_tau` the relative lift's; by default from the current control value,
    the caller fixes them from the margin (analysis/looks.py)."""
    if name == P95:
        return _p95(snapshot, margin, alpha=alpha, min_units=min_units)
    m = metric(name)
    worse_is_higher = not m.higher_is_better
    comparison = compare(
        snapshot, name, sequential=sequential, alpha=alpha, previous=previous, min_units=min_units,
        tau=None if m.proportion else tau, relative_tau=relative_tau,
    )  # fmt: skip
    test = comparison.test
    base = {
        "metric": name,
        "margin": margin,
        "relative": relative,
        "higher_is_worse": worse_is_higher,
        "test": test,
    }
    ci = test.relative_interval if relative else test.interval
    c = comparison.control
    if relative and test.status == "ok" and ci is None and c is not None and c.value == 0:
        # a relative margin on a metric that is 0 in control (cost without prices): no harm
        # when the treatment is shown no higher (lower, for higher-is-better) than 0
        assert test.interval is not None
        harm = test.interval.high if worse_is_higher else -test.interval.low
        if harm <= 0:
            return GuardrailResult(
                verdict="non_inferior",
                reason=f"control is 0 and the harm is at most {harm:.4g}",
                **base,
            )
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


def _p95(
    snapshot: ExperimentSnapshot, margin: float, *, alpha: float, min_units: int
) -> GuardrailResult:
    """p95 latency, relative margin. The p95s are log-normal approximations from each arm's
    latency mean and variance (analysis/stats/quantiles.py) and carry no variance of their own,
    so the verdict also needs the unit-level, always-valid test of the *mean* latency to agree:
    `inferior` when the p95 grew by more than the margin and the mean is significantly higher;
    `non_inferior` when the p95 grew by less and the mean's relative interval lies below the
    margin; `inconclusive` otherwise."""
    mean = compare(snapshot, "latency_ms", sequential=True, alpha=alpha, min_units=min_units)
    base = {"metric": P95, "margin": margin, "relative": True, "higher_is_worse": True}
    c95 = latency_quantile(snapshot.control.totals)
    t95 = latency_quantile(snapshot.treatment.totals)
    test = mean.test
    if c95 is None or t95 is None or test.status != "ok" or test.interval is None:
        return GuardrailResult(
            verdict="insufficient_data",
            reason=test.reason or "too few requests",
            test=test if test.status != "ok" else insufficient(test.method, "too few requests"),
            **base,
        )
    growth = t95 / c95 - 1
    numbers = f"p95 {c95:.0f} ms -> {t95:.0f} ms ({growth:+.1%})"
    rel = test.relative_interval
    if growth > margin and test.interval.low > 0:
        return GuardrailResult(
            verdict="inferior",
            reason=f"{numbers}, mean latency significantly higher",
            test=test,
            **base,
        )
    if growth < margin and rel is not None and rel.high < margin:
        return GuardrailResult(
            verdict="non_inferior", reason=f"{numbers}, mean within the margin", test=test, **base
        )
    return GuardrailResult(verdict="inconclusive", reason=numbers, test=test, **base)
