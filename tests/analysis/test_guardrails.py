"""Guardrail verdicts from per-arm confidence sequences: proportions (with the design effect of
clustered events) and the p95 latency from histograms."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from analysis.guardrails import CS_P95, CS_RATE, design_effect, evaluate
from analysis.stats.bernoulli import latency_bucket, rate_bounds
from analysis.stats.delta import ratio_estimate
from analysis.types import ArmSnapshot, ArmTotals, ExperimentSnapshot, UnitSums


def _units(y: np.ndarray, n: np.ndarray, num: str = "errors") -> UnitSums:
    return UnitSums(
        units=len(n), s1={num: float(y.sum()), "requests": float(n.sum())},
        s2={num: float(y @ y), "requests": float(n @ n)}, cross={f"{num}|requests": float(y @ n)},
        nonzero={"requests": int((n > 0).sum())},
    )  # fmt: skip


def _snap(c: UnitSums, t: UnitSums, ch: dict[int, int] | None = None,
          th: dict[int, int] | None = None) -> ExperimentSnapshot:  # fmt: skip
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=5, taken_at=0,
        control=ArmSnapshot(units=c, totals=ArmTotals(latency_histogram=ch or {})),
        treatment=ArmSnapshot(units=t, totals=ArmTotals(latency_histogram=th or {})),
    )  # fmt: skip


def _independent(
    rng: np.random.Generator, units: int, rate: float, num: str = "errors"
) -> UnitSums:
    n = np.ones(units)
    return _units((rng.random(units) < rate).astype(float), n, num)


def test_a_tenfold_error_rate_is_a_breach_within_a_few_hundred_requests() -> None:
    rng = np.random.default_rng(1)
    c, t = _independent(rng, 3800, 0.01), _independent(rng, 200, 0.10)
    g = evaluate(_snap(c, t), "error_rate", 0.01, alpha=0.05)
    assert g.verdict == "inferior", g.reason
    assert g.test.method == CS_RATE and g.test.interval is not None
    # the interval of the difference is what the two sequences allow
    # (with counts divided by the design effect, here n/(n - 1) from the unit-level variance)
    bounds = []
    for arm in (t, c):
        e = ratio_estimate(arm, "errors", "requests")
        assert e is not None
        deff = design_effect(e.value, e.variance, e.denominator)
        assert 1 <= deff < 1.01
        bounds.append(rate_bounds(e.numerator / deff, e.denominator / deff, 0.025))
    (t_lo, t_hi), (c_lo, c_hi) = bounds
    assert g.test.interval.low == pytest.approx(t_lo - c_hi)
    assert g.test.interval.high == pytest.approx(t_hi - c_lo)
    assert g.test.interval.low > 0.01  # the breach: t_lo > c_hi + margin
    # the same rates are fine with a 20-point margin, and a relative margin of 50 % breached
    assert evaluate(_snap(c, t), "error_rate", 0.5, relative=True).verdict == "inferior"
    assert evaluate(_snap(c, t), "error_rate", 0.20).verdict == "non_inferior"


def test_equal_rates_are_non_inferior_with_enough_data_and_inconclusive_with_little() -> None:
    rng = np.random.default_rng(2)
    big = evaluate(_snap(_independent(rng, 20000, 0.01), _independent(rng, 5000, 0.01)),
                   "error_rate", 0.01)  # fmt: skip
    assert big.verdict == "non_inferior", big.reason
    small = evaluate(_snap(_independent(rng, 60, 0.01), _independent(rng, 30, 0.01)),
                     "error_rate", 0.01)  # fmt: skip
    assert small.verdict == "inconclusive", small.reason
    few = evaluate(_snap(_independent(rng, 60, 0.01), _independent(rng, 10, 0.01)),
                   "error_rate", 0.01, min_units=20)  # fmt: skip
    assert few.verdict == "insufficient_data" and "20+" in few.reason


def test_higher_is_better_rates_are_oriented() -> None:
    rng = np.random.default_rng(3)
    c = _independent(rng, 20000, 0.60, "fb:resolved")
    worse = _independent(rng, 2000, 0.40, "fb:resolved")
    same = _independent(rng, 20000, 0.60, "fb:resolved")
    assert evaluate(_snap(c, worse), "resolution_rate", 0.05).verdict == "inferior"
    assert evaluate(_snap(c, same), "resolution_rate", 0.05).verdict == "non_inferior"
    assert evaluate(_snap(c, worse), "resolution_rate", 0.10, relative=True).verdict == "inferior"
    assert evaluate(_snap(c, same), "resolution_rate", 0.10, relative=True).verdict == (
        "non_inferior"
    )


def test_clustered_errors_count_as_fewer_trials() -> None:
    # 1,000 treatment users with 10 requests each; 80 errors: spread over 80 users, or all 10
    # requests of 8 users. Same totals, but clustering is much weaker evidence.
    n = np.full(1000, 10.0)
    spread = np.zeros(1000)
    spread[:80] = 1
    clustered = np.zeros(1000)
    clustered[:8] = 10
    rng = np.random.default_rng(4)
    c = _independent(rng, 40000, 0.001)
    g_spread = evaluate(_snap(c, _units(spread, n)), "error_rate", 0.001)
    g_clustered = evaluate(_snap(c, _units(clustered, n)), "error_rate", 0.001)
    assert g_spread.verdict == "inferior", g_spread.reason
    assert g_clustered.verdict == "inconclusive", g_clustered.reason
    assert g_spread.test.interval is not None and g_clustered.test.interval is not None
    width = lambda g: g.test.interval.high - g.test.interval.low  # noqa: E731
    assert width(g_clustered) > 2 * width(g_spread)
    assert design_effect(0.004, 0.004 * 0.996 / 10000, 10000) == 1.0
    assert design_effect(0.004, 10 * 0.004 * 0.996 / 10000, 10000) == pytest.approx(10)
    assert design_effect(0.0, 0.0, 100) == 1.0


def _latencies(rng: np.random.Generator, n: int, scale: float = 1.0) -> dict[int, int]:
    lat = rng.lognormal(np.log(800), 0.6, n) * scale
    lat[rng.random(n) < 0.002] = 30_000.0
    return dict(Counter(latency_bucket(float(v)) for v in lat))


def test_p95_from_histograms() -> None:
    rng = np.random.default_rng(5)
    units = _independent(rng, 100, 0.0)
    ch = _latencies(rng, 40_000)
    slow = evaluate(_snap(units, units, ch, _latencies(rng, 5000, 1.6)), "latency_p95_ms", 0.25,
                    relative=True)  # fmt: skip
    assert slow.verdict == "inferior" and slow.test.method == CS_P95, slow.reason
    assert slow.test.relative_interval is not None and slow.test.relative_interval.low > 0.25
    same = evaluate(_snap(units, units, ch, _latencies(rng, 20_000)), "latency_p95_ms", 0.25,
                    relative=True)  # fmt: skip
    assert same.verdict == "non_inferior", same.reason
    few = evaluate(_snap(units, units, ch, _latencies(rng, 100, 1.6)), "latency_p95_ms", 0.25,
                   relative=True)  # fmt: skip
    assert few.verdict == "inconclusive", few.reason
    none = evaluate(_snap(units, units, ch, {}), "latency_p95_ms", 0.25, relative=True)
    assert none.verdict == "insufficient_data" and none.test.status == "insufficient_data"
    thin = evaluate(_snap(units, units, ch, ch), "latency_p95_ms", 0.25, relative=True,
                    min_units=500)  # fmt: skip
    assert thin.verdict == "insufficient_data" and "500+" in thin.reason
    assert "nan" not in slow.model_dump_json().lower()
