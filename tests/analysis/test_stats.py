"""Each statistic against an independent computation or a published worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from analysis.guardrails import evaluate
from analysis.metrics import compare, difference_test
from analysis.stats.delta import ratio_estimate, ratio_from_arrays
from analysis.stats.sequential import half_width, log_mixture_lr, msprt
from analysis.stats.srm import srm_test
from analysis.types import ArmSnapshot, Estimate, ExperimentSnapshot, UnitSums


def _clustered(rng: np.random.Generator, users: int, m: float) -> tuple[np.ndarray, np.ndarray]:
    p = rng.beta(10 * m, 10 * (1 - m), users)
    n = 1 + rng.poisson(3, users)
    return rng.binomial(n, p).astype(float), n.astype(float)


def test_delta_method_matches_unit_bootstrap() -> None:
    rng = np.random.default_rng(7)
    y, n = _clustered(rng, 3000, 0.7)
    ratio, var = ratio_from_arrays(y, n)  # type: ignore[misc]
    idx = rng.integers(0, len(y), (2000, len(y)))
    boot = y[idx].sum(axis=1) / n[idx].sum(axis=1)
    assert ratio == pytest.approx(y.sum() / n.sum())
    assert var == pytest.approx(boot.var(ddof=1), rel=0.10)
    # and the request-level (binomial) variance is visibly too small on clustered data
    assert ratio * (1 - ratio) / n.sum() < 0.9 * var


def test_delta_method_from_unit_sums_equals_arrays() -> None:
    rng = np.random.default_rng(11)
    y, n = _clustered(rng, 500, 0.6)
    units = UnitSums(
        units=len(y),
        s1={"y": y.sum(), "n": n.sum()},
        s2={"y": y @ y, "n": n @ n},
        cross={"y|n": y @ n},
    )
    est = ratio_estimate(units, "y", "n")
    assert est is not None
    assert (est.value, est.variance) == pytest.approx(ratio_from_arrays(y, n))
    # linearisation computed directly: Var = Var(y_i - R n_i) / (K mean(n)^2)
    r = y.sum() / n.sum()
    assert est.variance == pytest.approx((y - r * n).var(ddof=1) / (len(y) * n.mean() ** 2))


def test_msprt_likelihood_ratio_matches_numerical_integration() -> None:
    diff, var, tau = 0.021, 0.0001, 0.05
    sd = math.sqrt(var)

    def integrand(theta: float) -> float:
        return stats.norm.pdf(diff, theta, sd) * stats.norm.pdf(theta, 0, tau)

    num, _ = integrate.quad(integrand, -1, 1, points=[0, diff], limit=200)
    lr = num / stats.norm.pdf(diff, 0, sd)
    assert log_mixture_lr(diff, var, tau) == pytest.approx(math.log(lr), rel=1e-6)
    # the confidence sequence's edge is where the test of theta0 = edge stops rejecting
    h = half_width(var, tau, 0.05)
    assert log_mixture_lr(h, var, tau) == pytest.approx(math.log(1 / 0.05), rel=1e-9)
    result = msprt(diff, var, tau)
    assert result.p_value == pytest.approx(min(1.0, 1 / lr), rel=1e-6)
    assert result.interval is not None
    assert result.interval.high - diff == pytest.approx(h)


def test_msprt_keeps_running_minimum_and_intersection() -> None:
    first = msprt(0.05, 0.0002, 0.05)
    later = msprt(0.0, 0.0001, 0.05, previous=first)
    assert later.p_value == first.p_value
    assert later.interval is not None and first.interval is not None
    assert later.interval.low >= first.interval.low and later.interval.high <= first.interval.high


def test_srm_flags_a_broken_split_and_spares_correct_ones() -> None:
    broken = srm_test(control_units=18_400, treatment_units=1_600, expected_share=0.10)
    assert broken.mismatch and broken.p_value is not None and broken.p_value < 1e-10
    # the Bayes factor is the Beta-binomial mixture's likelihood over the binomial's
    bf = stats.betabinom.pmf(1_600, 20_000, 10, 90) / stats.binom.pmf(1_600, 20_000, 0.10)
    assert broken.log_bayes_factor == pytest.approx(np.log(bf), rel=1e-9)
    assert broken.p_value == pytest.approx(1 / (bf / 2))  # step 1 spends half the threshold
    rng = np.random.default_rng(5)
    flagged = 0
    for _ in range(1000):
        t = int(rng.binomial(20_000, 0.10))
        flagged += srm_test(20_000 - t, t, 0.10).mismatch
    assert flagged <= 10  # >= 99 % of correct splits are not flagged


def _snapshot(c: UnitSums, t: UnitSums) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=10, taken_at=0,
        control=ArmSnapshot(units=c), treatment=ArmSnapshot(units=t),
    )  # fmt: skip


def _sums(y: np.ndarray, n: np.ndarray, num: str = "errors", den: str = "requests") -> UnitSums:
    return UnitSums(
        units=len(y),
        s1={num: float(y.sum()), den: float(n.sum())},
        s2={num: float(y @ y), den: float(n @ n)},
        cross={f"{num}|{den}": float(y @ n)},
        nonzero={den: int((n != 0).sum())},
    )


def test_guardrail_verdicts() -> None:
    rng = np.random.default_rng(2)
    n_c, n_t = 1 + rng.poisson(3, 5000), 1 + rng.poisson(3, 5000)
    ok = _snapshot(_sums(rng.binomial(n_c, 0.01), n_c), _sums(rng.binomial(n_t, 0.01), n_t))
    bad = _snapshot(_sums(rng.binomial(n_c, 0.01), n_c), _sums(rng.binomial(n_t, 0.10), n_t))
    assert evaluate(ok, "error_rate", 0.01).verdict == "non_inferior"
    assert evaluate(bad, "error_rate", 0.01).verdict == "inferior"
    assert evaluate(bad, "error_rate", 0.5, relative=True).verdict == "inferior"
    small = _snapshot(_sums(rng.binomial(n_c[:30], 0.01), n_c[:30]),
                      _sums(rng.binomial(n_t[:30], 0.03), n_t[:30]))  # fmt: skip
    assert evaluate(small, "error_rate", 0.01).verdict in ("inconclusive", "insufficient_data")


@pytest.mark.parametrize(
    "units",
    [
        UnitSums(),
        UnitSums(units=1, s1={"errors": 1, "requests": 1}),
        UnitSums(units=50, s1={"errors": 0, "requests": 50}, s2={"requests": 50},
                 nonzero={"votes": 3}),  # no unit with requests counted yet
    ],
)  # fmt: skip
def test_degenerate_inputs_give_insufficient_data(units: UnitSums) -> None:
    snap = _snapshot(units, units)
    for sequential in (True, False):
        result = compare(snap, "error_rate", sequential=sequential)
        assert result.test.status == "insufficient_data" and result.test.reason
        assert "nan" not in result.model_dump_json().lower()
    assert evaluate(snap, "error_rate", 0.01).verdict == "insufficient_data"
    assert srm_test(0, 0, 0.1).status == "insufficient_data"
    assert srm_test(10, 0, 0.0).status == "insufficient_data"
    zero = Estimate(value=0.5, variance=0.0, units=10, numerator=5, denominator=10)
    assert difference_test(zero, zero).status == "insufficient_data"
    assert msprt(0.1, 0.0, 0.05).status == "insufficient_data"
