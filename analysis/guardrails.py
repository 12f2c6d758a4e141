"""Guardrails: one-sided non-inferiority with a margin.

A guardrail metric (error rate, p95 latency, cost per request, escalation rate) may not get worse
by more than its margin. With d = treatment − control oriented so that positive is worse (the
sign is flipped for metrics where higher is better) and [lo, hi] its always-valid interval:

- `inferior` (a breach): lo > margin, the treatment is worse by more than the margin;
- `non_inferior`: hi < margin;
- `inconclusive` otherwise.

A relative margin (0.10: 10 % worse) is compared with the relative change's interval instead.

Proportions (error rate, client-close rate, escalation and custom `*_rate` signals) and the p95
latency are judged from an exact always-valid confidence sequence per arm
(analysis/stats/bernoulli.py), each at level α/2, so that both arms are covered together with
probability ≥ 1 − α at every look and every verdict is valid; the interval of the harm is the
range the two sequences allow (treatment low against control high, and the reverse). A
proportion's counts are the arm's unit-level sums divided by its Kish design effect (the
unit-level delta-method variance over the binomial one, at least 1): errors that cluster by user
count as fewer independent trials. Other metrics (means such as cost per request) use the
mSPRT of analysis/metrics.py, whose two-sided interval at α makes each one-sided statement at
level α/2.
"""

from __future__ import annotations

from analysis.metrics import Metric, compare, metric
from analysis.periods import judged
from analysis.stats._util import insufficient, interval
from analysis.stats.bernoulli import histogram_quantile, quantile_bounds, rate_bounds
from analysis.stats.delta import ratio_estimate
from analysis.types import REQUESTS, ExperimentSnapshot, GuardrailResult, TestResult

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
    """The guardrail's verdict. `sequential`, `previous`, `tau` and `relative_tau` apply to the
    mSPRT of per-request means: `tau` is its mixing scale, `relative_tau` the relative lift's, by
    default from the current control value; the caller fixes them from the margin
    (analysis/looks.py). The sequences of proportions and of the p95 are exact, always valid and
    need no state."""
    # the sequences judge the current treatment model on its own periods (as `compare` does)
    if name == P95:
        return _p95(judged(snapshot), margin, alpha=alpha, min_units=min_units)
    m = metric(name)
    if m.proportion:
        return _proportion(judged(snapshot), m, margin, relative=relative, alpha=alpha,
                           min_units=min_units)  # fmt: skip
    worse_is_higher = not m.higher_is_better
    comparison = compare(
        snapshot, name, sequential=sequential, alpha=alpha, previous=previous, min_units=min_units,
        tau=tau, relative_tau=relative_tau,
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


# -- confidence sequences per arm (proportions, p95) ---------------------------------------------

CS_RATE = "Beta-binomial confidence sequence per arm (alpha/2 each), design-effect counts"
CS_P95 = "p95 confidence sequence per arm from the latency histogram (alpha/2 each)"


def design_effect(value: float, variance: float, n: float) -> float:
    """Kish's design effect of a proportion: its unit-level (delta) variance over the binomial
    variance of as many independent trials, at least 1 (1 without events or without misses)."""
    binomial = value * (1 - value) / n if n > 0 else 0.0
    if binomial <= 0:
        return 1.0
    return max(1.0, variance / binomial)


def _judge(
    t: tuple[float, float], c: tuple[float, float], margin: float, *, relative: bool,
    worse_is_higher: bool,
) -> str:  # fmt: skip
    """The verdict from the two arms' bounds (treatment t, control c): for a metric where
    higher is worse, inferior when t_lo > c_hi + margin (relative: (1 + margin) c_hi), and
    non-inferior when t_hi < c_lo + margin (relative: (1 + margin) c_lo); mirrored otherwise."""
    (t_lo, t_hi), (c_lo, c_hi) = t, c
    if worse_is_higher:
        bad = t_lo > ((1 + margin) * c_hi if relative else c_hi + margin)
        fine = t_hi < ((1 + margin) * c_lo if relative else c_lo + margin)
    else:
        bad = t_hi < ((1 - margin) * c_lo if relative else c_lo - margin)
        fine = t_lo > ((1 - margin) * c_hi if relative else c_hi - margin)
    return "inferior" if bad else "non_inferior" if fine else "inconclusive"


def _cs_result(
    method: str, t: tuple[float, float], c: tuple[float, float], t_hat: float, c_hat: float,
    alpha: float,
) -> TestResult:  # fmt: skip
    """The comparison the two sequences imply: the difference t − c lies in
    [t_lo − c_hi, t_hi − c_lo], the ratio t / c − 1 in [t_lo / c_hi − 1, t_hi / c_lo − 1]."""
    (t_lo, t_hi), (c_lo, c_hi) = t, c
    low, high = t_lo - c_hi, t_hi - c_lo
    rel = rel_ci = None
    if c_hat > 0:
        rel = t_hat / c_hat - 1
    if c_lo > 0 and c_hi < float("inf") and t_hi < float("inf"):
        rel_ci = interval(t_lo / c_hi - 1, t_hi / c_lo - 1)
    finite = high < float("inf")
    return TestResult(
        status="ok", method=method, difference=t_hat - c_hat,
        interval=interval(low, high) if finite else None, relative_lift=rel,
        relative_interval=rel_ci, significant=low > 0 or high < 0, alpha=alpha,
    )  # fmt: skip


def _harm(t: tuple[float, float], c: tuple[float, float], relative: bool, worse: bool) -> str:
    (t_lo, t_hi), (c_lo, c_hi) = t, c
    if relative:
        lo = t_lo / c_hi - 1 if c_hi > 0 else float("nan")
        hi = t_hi / c_lo - 1 if c_lo > 0 else float("inf")
        if not worse:
            lo, hi = -hi, -lo
        return f"relative harm [{lo:+.2%}, {hi:+.2%}]".replace("nan%", "?")
    lo, hi = (t_lo - c_hi, t_hi - c_lo) if worse else (c_lo - t_hi, c_hi - t_lo)
    return f"harm [{lo:+.4g}, {hi:+.4g}]"


def _reason(verdict: str, margin: float, relative: bool, numbers: str) -> str:
    bound = f"{margin:.0%}" if relative else f"{margin:g}"
    if verdict == "inferior":
        return f"worse by more than the margin {bound}: {numbers}"
    if verdict == "non_inferior":
        return f"within the margin {bound}: {numbers}"
    return f"{numbers} straddles the margin {bound}"


def _proportion(
    snapshot: ExperimentSnapshot, m: Metric, margin: float, *, relative: bool, alpha: float,
    min_units: int,
) -> GuardrailResult:  # fmt: skip
    """A proportion: each arm's rate from its unit-level sums, with effective counts x/deff and
    n/deff, covered by a Beta-binomial confidence sequence at α/2."""
    worse = not m.higher_is_better
    base = {"metric": m.name, "margin": margin, "relative": relative, "higher_is_worse": worse}
    arms = (snapshot.control.units, snapshot.treatment.units)
    have = tuple(u.with_data(m.denominator) for u in arms)
    ests = tuple(ratio_estimate(u, m.numerator, m.denominator) for u in arms)
    c_est, t_est = ests
    if c_est is None or t_est is None or min(have) < min_units:
        reason = (f"each arm needs {min_units}+ units with {m.denominator} "
                  f"(control {have[0]}, treatment {have[1]})")  # fmt: skip
        return GuardrailResult(verdict="insufficient_data", reason=reason,
                               test=insufficient(CS_RATE, reason, alpha), **base)  # fmt: skip
    bounds = []
    deffs = []
    for e in (t_est, c_est):
        deff = design_effect(e.value, e.variance, e.denominator)
        deffs.append(deff)
        bounds.append(rate_bounds(e.numerator / deff, e.denominator / deff, alpha / 2))
    t, c = bounds
    verdict = _judge(t, c, margin, relative=relative, worse_is_higher=worse)
    numbers = (
        f"control {c_est.value:.4g} [{c[0]:.4g}, {c[1]:.4g}], treatment {t_est.value:.4g} "
        f"[{t[0]:.4g}, {t[1]:.4g}], {_harm(t, c, relative, worse)}, design effect "
        f"{deffs[0]:.2g} (treatment) / {deffs[1]:.2g} (control)"
    )
    test = _cs_result(CS_RATE, t, c, t_est.value, c_est.value, alpha)
    return GuardrailResult(verdict=verdict, reason=_reason(verdict, margin, relative, numbers),
                           test=test, **base)  # fmt: skip


def _p95(
    snapshot: ExperimentSnapshot, margin: float, *, alpha: float, min_units: int
) -> GuardrailResult:
    """p95 latency, relative margin, from each arm's latency histogram: a confidence sequence
    for the p95 per arm at α/2; inferior when t95_lo > (1 + margin) c95_hi, non-inferior when
    t95_hi < (1 + margin) c95_lo."""
    base = {"metric": P95, "margin": margin, "relative": True, "higher_is_worse": True}
    arms = (snapshot.control, snapshot.treatment)
    have = tuple(a.units.with_data(REQUESTS) for a in arms)
    hists = tuple(a.totals.latency_histogram for a in arms)
    reason = ""
    if min(have) < min_units:
        reason = (f"each arm needs {min_units}+ units with requests "
                  f"(control {have[0]}, treatment {have[1]})")  # fmt: skip
    elif not all(hists):
        reason = "no latency histogram in both arms"
    if reason:
        return GuardrailResult(verdict="insufficient_data", reason=reason,
                               test=insufficient(CS_P95, reason, alpha), **base)  # fmt: skip
    c = quantile_bounds(hists[0], 0.95, alpha / 2)
    t = quantile_bounds(hists[1], 0.95, alpha / 2)
    c_hat, t_hat = histogram_quantile(hists[0]), histogram_quantile(hists[1])
    assert c is not None and t is not None and c_hat is not None and t_hat is not None
    verdict = _judge(t, c, margin, relative=True, worse_is_higher=True)
    numbers = (
        f"p95 {c_hat:.0f} ms [{c[0]:.0f}, {c[1]:.0f}] -> {t_hat:.0f} ms [{t[0]:.0f}, {t[1]:.0f}]"
        f", {_harm(t, c, True, True)}"
    )
    test = _cs_result(CS_P95, t, c, t_hat, c_hat, alpha)
    return GuardrailResult(verdict=verdict, reason=_reason(verdict, margin, True, numbers),
                           test=test, **base)  # fmt: skip
