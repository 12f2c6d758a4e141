"""The metric catalogue and the comparison of arms on one metric.

Every metric is a ratio of two per-unit totals kept by the gateway (analysis/types.py), so the
same code serves rates (thumbs-up rate = thumbs up / votes; error rate = errors / requests) and
per-request means (latency, tokens, cost). Comparisons are at the unit level (delta method):
`sequential=True` gives the always-valid mSPRT used for live decisions, `False` the fixed-horizon
z-test for the final report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from analysis.stats._util import insufficient, normal_result
from analysis.stats.delta import ratio_estimate
from analysis.stats.sequential import msprt
from analysis.types import (
    CLIENT_CLOSED,
    COMPLETION_TOKENS,
    COST_USD,
    ERRORS,
    LATENCY_MS,
    REQUESTS,
    TTFT_MS,
    TTFT_N,
    VOTES,
    ArmSnapshot,
    Estimate,
    ExperimentSnapshot,
    MetricComparison,
    TestResult,
    signal_count,
)


@dataclass(frozen=True, slots=True)
class Metric:
    """Σ numerator / Σ denominator over units. `tau` is the mSPRT mixing scale: an absolute
    effect for rates, a fraction of the control value (`tau_relative`) for means."""

    name: str
    numerator: str
    denominator: str
    higher_is_better: bool
    tau: float | None = None
    tau_relative: float | None = None
    description: str = ""

    def mixing_scale(self, control_value: float) -> float:
        if self.tau is not None:
            return self.tau
        scale = abs(control_value) * (self.tau_relative or 0.1)
        return scale if scale > 0 else 1.0


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "thumbs_up_rate",
            signal_count("thumbs_up"),
            VOTES,
            True,
            tau=0.05,
            description="thumbs up / (thumbs up + thumbs down)",
        ),
        Metric(
            "escalation_rate",
            signal_count("escalation"),
            REQUESTS,
            False,
            tau=0.02,
            description="escalations per request",
        ),
        Metric(
            "resolution_rate",
            signal_count("resolved"),
            REQUESTS,
            True,
            tau=0.05,
            description="resolutions per request",
        ),
        Metric(
            "regeneration_rate",
            signal_count("regenerated"),
            REQUESTS,
            False,
            tau=0.02,
            description="regenerated answers per request",
        ),
        Metric(
            "error_rate",
            ERRORS,
            REQUESTS,
            False,
            tau=0.01,
            description="failed requests per request",
        ),
        Metric(
            "client_close_rate",
            CLIENT_CLOSED,
            REQUESTS,
            False,
            tau=0.02,
            description="requests whose client went away mid-stream, per request",
        ),
        Metric(
            "latency_ms",
            LATENCY_MS,
            REQUESTS,
            False,
            tau_relative=0.1,
            description="mean latency per request, ms",
        ),
        Metric(
            "ttft_ms",
            TTFT_MS,
            TTFT_N,
            False,
            tau_relative=0.1,
            description="mean time to first token per streamed request, ms",
        ),
        Metric(
            "completion_tokens",
            COMPLETION_TOKENS,
            REQUESTS,
            False,
            tau_relative=0.1,
            description="completion tokens per request",
        ),
        Metric(
            "cost_per_request",
            COST_USD,
            REQUESTS,
            False,
            tau_relative=0.1,
            description="cost per request, USD",
        ),
    )
}


def metric(name: str) -> Metric:
    """A catalogue metric, or a custom signal's rate (`<signal>_rate`)."""
    found = METRICS.get(name)
    if found is not None:
        return found
    if name.endswith("_rate"):
        return Metric(name, signal_count(name[: -len("_rate")]), REQUESTS, True, tau=0.05)
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)} or <signal>_rate")


def difference_test(control: Estimate, treatment: Estimate, alpha: float = 0.05) -> TestResult:
    """Fixed-horizon z-test of treatment − control with unit-level (delta) variances."""
    method = "z-test, delta-method variance (fixed horizon)"
    var = control.variance + treatment.variance
    if var <= 0:
        return insufficient(method, "no variance yet (too few units or all values equal)", alpha)
    se = math.sqrt(var)
    diff = treatment.value - control.value
    z = diff / se
    p = float(2 * stats.norm.sf(abs(z)))
    q = float(stats.norm.ppf(1 - alpha / 2))
    rel = se_rel = None
    if control.value != 0:
        rel = treatment.value / control.value - 1
        se_rel = math.sqrt(
            treatment.variance / control.value**2
            + treatment.value**2 * control.variance / control.value**4
        )
    return normal_result(
        method, diff=diff, se=se, q=q, p=p, statistic=z, alpha=alpha, rel=rel, se_rel=se_rel
    )


def estimates(m: Metric, control: ArmSnapshot, treatment: ArmSnapshot) -> tuple[
    Estimate | None, Estimate | None
]:  # fmt: skip
    return (
        ratio_estimate(control.units, m.numerator, m.denominator),
        ratio_estimate(treatment.units, m.numerator, m.denominator),
    )


def compare(
    snapshot: ExperimentSnapshot,
    name: str,
    *,
    sequential: bool = True,
    alpha: float = 0.05,
    previous: TestResult | None = None,
    min_units: int = 2,
) -> MetricComparison:
    """Treatment vs control on one metric, at the unit level."""
    m = metric(name)
    c, t = estimates(m, snapshot.control, snapshot.treatment)
    method = "mSPRT" if sequential else "z-test"
    if c is None or t is None or min(c.units, t.units) < min_units:
        return MetricComparison(
            metric=name, control=c, treatment=t,
            test=insufficient(method, f"each arm needs {min_units}+ units with data", alpha),
        )  # fmt: skip
    if sequential:
        test = msprt(
            t.value - c.value,
            c.variance + t.variance,
            m.mixing_scale(c.value),
            alpha,
            previous,
            control_value=c.value,
        )
    else:
        test = difference_test(c, t, alpha)
    return MetricComparison(metric=name, control=c, treatment=t, test=test)
