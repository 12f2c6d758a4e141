"""The metric catalogue and the comparison of arms on one metric.

Every metric is a ratio of two per-unit totals kept by the gateway (analysis/types.py), so the
same code serves rates (thumbs-up rate = thumbs up / votes; error rate = errors / requests) and
per-request means (latency, tokens, cost). Comparisons are at the unit level (delta method):
`sequential=True` gives the always-valid mSPRT used for live decisions, `False` the fixed-horizon
z-test for the final report.

Before any test: each arm needs `min_units` units with a non-zero denominator (units that voted,
for the thumbs-up rate), and each arm's variance must be positive. For proportions (events per
request or per vote) each arm's variance is floored at the binomial variance of its
Laplace-smoothed rate, (x + 1)/(n + 2), over its n requests (votes): with rare or zero events the
unit-level variance is 0 or far too small, and the floor lets a healthy rate be shown
unchanged (0 errors in 5,000 requests: the floor's standard error is 0.02 points) while a
single unlucky unit cannot produce a tiny p-value (docs/statistics.md). Guardrails on
proportions use exact confidence sequences per arm instead (analysis/guardrails.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from analysis.periods import clustering, judged
from analysis.stats._util import insufficient, interval, normal_result
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
    PeriodEstimate,
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
    proportion: bool = False  # numerator counts events of the denominator (a rate in [0, 1])

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
            proportion=True,
        ),
        Metric(
            "thumbs_down_rate",
            signal_count("thumbs_down"),
            VOTES,
            False,
            tau=0.05,
            description="thumbs down / (thumbs up + thumbs down)",
            proportion=True,
        ),
        Metric(
            "escalation_rate",
            signal_count("escalation"),
            REQUESTS,
            False,
            tau=0.02,
            description="escalations per request",
            proportion=True,
        ),
        Metric(
            "resolution_rate",
            signal_count("resolved"),
            REQUESTS,
            True,
            tau=0.05,
            description="resolutions per request",
            proportion=True,
        ),
        Metric(
            "regeneration_rate",
            signal_count("regenerated"),
            REQUESTS,
            False,
            tau=0.02,
            description="regenerated answers per request",
            proportion=True,
        ),
        Metric(
            "error_rate",
            ERRORS,
            REQUESTS,
            False,
            tau=0.01,
            description="failed requests per request",
            proportion=True,
        ),
        Metric(
            "client_close_rate",
            CLIENT_CLOSED,
            REQUESTS,
            False,
            tau=0.02,
            description="requests whose client went away mid-stream, per request",
            proportion=True,
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
        return Metric(
            name, signal_count(name[: -len("_rate")]), REQUESTS, True, tau=0.05, proportion=True
        )
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
        se_rel = math.sqrt(relative_variance(control, treatment))
    return normal_result(
        method, diff=diff, se=se, q=q, p=p, statistic=z, alpha=alpha, rel=rel, se_rel=se_rel
    )


def relative_variance(control: Estimate, treatment: Estimate) -> float:
    """Delta-method variance of t / c − 1 for independent arms: var_t / c² + t² var_c / c⁴
    (the control's estimate varies too; dividing the difference's interval by c ignores it)."""
    c, t = control.value, treatment.value
    return treatment.variance / c**2 + t**2 * control.variance / c**4


def estimates(m: Metric, control: ArmSnapshot, treatment: ArmSnapshot) -> tuple[
    Estimate | None, Estimate | None
]:  # fmt: skip
    return (
        ratio_estimate(control.units, m.numerator, m.denominator),
        ratio_estimate(treatment.units, m.numerator, m.denominator),
    )


def variance_floor(m: Metric, est: Estimate) -> float:
    """The least variance an arm's estimate is tested with: for a proportion, the binomial
    variance of the Laplace-smoothed rate p = (x + 1)/(n + 2) over the arm's n requests (votes);
    0 for means. The unit-level (delta) variance is used whenever it is larger (clustering)."""
    if not m.proportion or est.denominator <= 0:
        return 0.0
    p = (est.numerator + 1) / (est.denominator + 2)
    return p * (1 - p) / est.denominator


def floored(m: Metric, est: Estimate) -> Estimate:
    floor = variance_floor(m, est)
    if est.variance >= floor:
        return est
    return est.model_copy(update={"variance": floor})


def exact_difference(method: str, control: float, treatment: float, alpha: float) -> TestResult:
    """Both arms without any spread: the difference is what it is."""
    diff = treatment - control
    rel = rel_ci = None
    if control != 0:
        rel = treatment / control - 1
        rel_ci = interval(rel, rel)
    return TestResult(
        status="ok", method=f"{method} (no spread in either arm: exact)", difference=diff,
        interval=interval(diff, diff), p_value=1.0 if diff == 0 else 0.0, statistic=0.0,
        relative_lift=rel, relative_interval=rel_ci, significant=diff != 0, alpha=alpha,
    )  # fmt: skip


def _tested(m: Metric, c: Estimate, t: Estimate) -> tuple[Estimate, Estimate]:
    """The arms' estimates as the tests use them: floored (proportions), and a mean with no
    spread in one arm borrows the other arm's unit-level dispersion, so that an arm of identical
    units never makes the test's variance that of the other arm alone. Both may stay at 0."""
    cf, tf = floored(m, c), floored(m, t)
    if cf.variance <= 0 and tf.variance > 0:
        cf = cf.model_copy(update={"variance": tf.variance * tf.units / max(cf.units, 1)})
    elif tf.variance <= 0 and cf.variance > 0:
        tf = tf.model_copy(update={"variance": cf.variance * cf.units / max(tf.units, 1)})
    return cf, tf


def by_period(
    m: Metric, snapshot: ExperimentSnapshot, min_units: int, inflation: float = 1.0
) -> tuple[Estimate, Estimate, list[PeriodEstimate]] | None:
    """The inverse-variance weighted combination of the per-period differences, or None when
    the snapshot has fewer than two periods or none with `min_units` units with data in both
    arms and a positive variance (skipped periods get weight 0).

    Units arrive at different times in the arms during a ramp (treatment's share grows), so
    pooled sums compare a later treatment with an earlier control: any drift over time biases
    the difference. Within a period the share is fixed, so its difference is not biased by a
    drift; the combination, Σ w_p d_p / Σ w_p with w_p = 1/var_p and variance 1/Σ w_p, keeps
    that. Returned as a pair of estimates whose difference and summed variance are the combined
    ones: the control at the weighted control mean (its variance Σ w_p² var_c,p / (Σ w_p)²),
    the treatment at that mean plus the difference. `inflation` multiplies both variances: the
    design effect of units that recur across periods (analysis/periods.py `clustering`)."""
    if len(snapshot.periods) < 2:
        return None
    rows: list[tuple[int, Estimate, Estimate, float, float]] = []
    for p in snapshot.periods:
        c = ratio_estimate(p.control, m.numerator, m.denominator)
        t = ratio_estimate(p.treatment, m.numerator, m.denominator)
        if c is None or t is None:
            continue
        ok = min(p.control.with_data(m.denominator), p.treatment.with_data(m.denominator))
        cf, tf = _tested(m, c, t)
        var = cf.variance + tf.variance
        rows.append((p.period, c, t, var, cf.variance if ok >= min_units and var > 0 else -1.0))
    used = [r for r in rows if r[4] >= 0]
    if not used:
        return None
    total = sum(1 / r[3] for r in used)
    out = [
        PeriodEstimate(
            period=period,
            control=c,
            treatment=t,
            difference=t.value - c.value,
            variance=var,
            weight=(1 / var) / total if vc >= 0 else 0.0,
        )
        for period, c, t, var, vc in rows
    ]
    diff = sum((1 / r[3]) * (r[2].value - r[1].value) for r in used) / total
    mean_c = sum((1 / r[3]) * r[1].value for r in used) / total
    var_c = inflation * sum(r[4] / r[3] ** 2 for r in used) / total**2
    var = inflation / total
    units_c = sum(r[1].units for r in used)
    units_t = sum(r[2].units for r in used)
    num_c = sum(r[1].numerator for r in used)
    den_c = sum(r[1].denominator for r in used)
    num_t = sum(r[2].numerator for r in used)
    den_t = sum(r[2].denominator for r in used)
    control = Estimate(value=mean_c, variance=var_c, units=units_c, numerator=num_c,
                       denominator=den_c)  # fmt: skip
    treatment = Estimate(value=mean_c + diff, variance=max(var - var_c, 0.0), units=units_t,
                         numerator=num_t, denominator=den_t)  # fmt: skip
    return control, treatment, out


def compare(
    snapshot: ExperimentSnapshot,
    name: str,
    *,
    sequential: bool = True,
    alpha: float = 0.05,
    previous: TestResult | None = None,
    min_units: int = 2,
    tau: float | None = None,
    relative_tau: float | None = None,
) -> MetricComparison:
    """Treatment vs control on one metric, at the unit level: each arm needs `min_units` units
    with a non-zero denominator and a positive (for proportions: floored) variance. `tau` and
    `relative_tau`: the mSPRT's mixing scales when fixed by the caller (analysis/looks.py);
    by default the metric's, from the current control value.

    With two or more periods (ramp steps, treatment swaps, resumes) the tested difference is
    the combination of the per-period differences (`by_period`; `periods` lists them) and the
    relative lift is relative to the weighted control mean; `control` and `treatment` stay
    the arms' cumulative estimates. The minimum evidence is that of the cumulative units.
    After a treatment swap all of this is on the periods of the current model only
    (analysis/periods.py `judged`)."""
    m = metric(name)
    whole, snapshot = snapshot, judged(snapshot)
    c, t = estimates(m, snapshot.control, snapshot.treatment)
    method = "mSPRT" if sequential else "z-test"
    have = (
        snapshot.control.units.with_data(m.denominator),
        snapshot.treatment.units.with_data(m.denominator),
    )
    if c is None or t is None or min(have) < min_units:
        reason = (
            f"each arm needs {min_units}+ units with {m.denominator} "
            f"(control {have[0]}, treatment {have[1]})"
        )
        return MetricComparison(
            metric=name, control=c, treatment=t, test=insufficient(method, reason, alpha)
        )
    combined = by_period(m, snapshot, min_units, clustering(m.numerator, m.denominator, whole))
    periods: list[PeriodEstimate] = []
    if combined is not None:
        cf, tf, periods = combined
    else:
        cf, tf = _tested(m, c, t)
    if cf.variance <= 0 and tf.variance <= 0:
        # a mean that every unit of both arms has exactly (cost without prices: 0): the
        # difference is known; with min_units units per arm this is not chance
        test = exact_difference(method, c.value, t.value, alpha)
        return MetricComparison(metric=name, control=c, treatment=t, test=test)
    if sequential:
        test = msprt(
            tf.value - cf.value,
            cf.variance + tf.variance,
            tau or m.mixing_scale(cf.value),
            alpha,
            previous,
            control_value=cf.value,
            relative_variance=relative_variance(cf, tf) if cf.value else None,
            relative_tau=relative_tau,
        )
    else:
        test = difference_test(cf, tf, alpha)
    return MetricComparison(metric=name, control=c, treatment=t, test=test, periods=periods)
