"""Paired statistics against independent computations, published values and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import analysis.eval.paired as paired_mod
from analysis.eval.paired import (
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap,
    paired_bootstrap_test,
    paired_t,
    small_n_warning,
)


def _pairs(
    both: int, base_only: int, cand_only: int, neither: int
) -> tuple[list[bool], list[bool]]:
    base = [True] * both + [True] * base_only + [False] * cand_only + [False] * neither
    cand = [True] * both + [False] * base_only + [True] * cand_only + [False] * neither
    return base, cand


def _exact_sum(b: int, c: int) -> float:
    """2 · Σ_{k ≤ min(b, c)} C(b + c, k) / 2^(b + c), capped at 1, in exact integers."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / float(2**m))


# --- McNemar ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c"), [(0, 0), (1, 0), (2, 0), (0, 6), (3, 7), (10, 10), (17, 1), (40, 61)]
)
def test_mcnemar_matches_the_binomial_sum_and_scipy(b: int, c: int) -> None:
    base, cand = _pairs(both=50, base_only=b, cand_only=c, neither=20)
    result = mcnemar_exact(base, cand)
    assert (result.b, result.c, result.n) == (b, c, 70 + b + c)
    assert result.p_value == pytest.approx(_exact_sum(b, c), rel=1e-12)
    if b + c:
        assert result.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_published_example() -> None:
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, airway hyper-
    # responsiveness before/after stem cell transplantation: n12 = 1, n21 = 7 (n = 21);
    # the exact conditional McNemar p-value is 0.0703 (R: mcnemar.exact / exact2x2).
    base, cand = _pairs(both=1, base_only=1, cand_only=7, neither=12)
    result = mcnemar_exact(base, cand)
    assert result.p_value == pytest.approx(0.0703, abs=5e-5)
    assert result.p_value == 18 / 256


def test_mcnemar_is_symmetric_and_ignores_concordant_pairs() -> None:
    b1, c1 = _pairs(both=5, base_only=2, cand_only=9, neither=5)
    b2, c2 = _pairs(both=500, base_only=9, cand_only=2, neither=300)
    assert mcnemar_exact(b1, c1).p_value == mcnemar_exact(b2, c2).p_value
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_mcnemar_holds_its_level_under_the_null_and_has_power() -> None:
    rng = np.random.default_rng(2024)
    n, sims, alpha = 60, 2000, 0.05

    def rejection_rate(p10: float, p01: float) -> float:
        rejections = 0
        for _ in range(sims):
            cells = rng.choice(4, size=n, p=[p10, p01, 0.6, 0.4 - p10 - p01])
            base = (cells == 0) | (cells == 2)
            cand = (cells == 1) | (cells == 2)
            rejections += mcnemar_exact(base.tolist(), cand.tolist()).p_value < alpha
        return rejections / sims

    null = rejection_rate(0.1, 0.1)
    assert null <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)
    assert null > 0.01  # it does reject sometimes: not a constant p = 1
    assert rejection_rate(0.02, 0.2) > 0.8


# --- bootstrap ----------------------------------------------------------------------------------


def _naive_bootstrap(
    base: list[float], cand: list[float], n_resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """One resample at a time, as documented: indices ⌊u·n⌋ for n fresh uniforms; the
    quantiles by sorting and linear interpolation (numpy's default definition)."""
    rng = np.random.default_rng(seed)
    d = [c - b for b, c in zip(base, cand, strict=True)]
    n = len(d)
    means = []
    for _ in range(n_resamples):
        u = rng.random(n)
        means.append(sum(d[int(x * n)] for x in u) / n)
    means.sort()

    def quantile(q: float) -> float:
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    tail = (1 - confidence) / 2
    below = sum(m <= 0 for m in means) / len(means)
    above = sum(m >= 0 for m in means) / len(means)
    return quantile(tail), quantile(1 - tail), min(1.0, 2 * min(below, above))


@pytest.mark.parametrize("block_cells", [4_000_000, 50])
def test_bootstrap_matches_a_naive_loop(monkeypatch: pytest.MonkeyPatch, block_cells: int) -> None:
    monkeypatch.setattr(paired_mod, "_BLOCK_CELLS", block_cells)  # 50: many small blocks
    rng = np.random.default_rng(5)
    base = rng.random(37).round(2).tolist()
    cand = (np.clip(np.asarray(base) + rng.normal(0.05, 0.2, 37), 0, 1)).round(2).tolist()
    low, high, p = _naive_bootstrap(base, cand, 3000, 0.9, seed=11)
    result = paired_bootstrap_test(base, cand, n_resamples=3000, confidence=0.9, seed=11)
    assert result.interval.low == pytest.approx(low, abs=1e-12)
    assert result.interval.high == pytest.approx(high, abs=1e-12)
    assert result.p_value == pytest.approx(p, abs=1e-12)
    assert result.mean_difference == pytest.approx(np.mean(cand) - np.mean(base))
    assert (
        paired_bootstrap(base, cand, n_resamples=3000, confidence=0.9, seed=11) == result.interval
    )


def test_bootstrap_agrees_with_the_normal_interval_on_a_large_sample() -> None:
    rng = np.random.default_rng(9)
    n = 4000
    base = rng.random(n)
    cand = np.clip(base + rng.normal(0.03, 0.25, n), 0, 1)
    d = cand - base
    se = d.std(ddof=1) / math.sqrt(n)
    z = stats.norm.ppf(0.975)
    result = paired_bootstrap(base, cand, n_resamples=4000, seed=3)
    assert result.low == pytest.approx(d.mean() - z * se, abs=0.15 * se)
    assert result.high == pytest.approx(d.mean() + z * se, abs=0.15 * se)


def test_bootstrap_seed_and_degenerate_inputs() -> None:
    rng = np.random.default_rng(4)
    base, cand = rng.random(30).tolist(), rng.random(30).tolist()
    assert paired_bootstrap(base, cand, seed=1) == paired_bootstrap(base, cand, seed=1)
    assert paired_bootstrap(base, cand, seed=1) != paired_bootstrap(base, cand, seed=2)
    same = paired_bootstrap_test([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert (same.interval.low, same.interval.high, same.p_value) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="no cases"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.0)


def test_paired_t_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(25)
    cand = base + rng.normal(0.1, 0.2, 25)
    result = paired_t(base, cand, alpha=0.05)
    ref = stats.ttest_rel(cand, base)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (result.interval.low, result.interval.high) == pytest.approx(
        (ci.low, ci.high), rel=1e-10
    )
    constant = paired_t([0.0, 0.5, 0.7], [0.1, 0.6, 0.8])  # 0.1 each, up to rounding
    assert constant.p_value == 0.0 and constant.interval.low == pytest.approx(0.1)
    assert constant.statistic is None
    assert paired_t([0.3, 0.4], [0.3, 0.4]).p_value == 1.0


# --- minimum detectable effect ------------------------------------------------------------------


def test_mde_gives_the_stated_power_in_simulation() -> None:
    # At the MDE, with that discordance, the exact McNemar test should reject about 80 % of
    # the time (a little less: the exact test is conservative).
    n, psi, alpha = 400, 0.2, 0.05
    delta = minimum_detectable_effect(n, 0.7, alpha=alpha, power=0.8, discordance=psi)
    assert 0.05 < delta < 0.08
    rng = np.random.default_rng(77)
    p10, p01 = (psi - delta) / 2, (psi + delta) / 2
    counts = rng.multinomial(n, [p10, p01, 1 - psi], size=4000)
    b, c = counts[:, 0], counts[:, 1]
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(b, c), b + c, 0.5))
    power = float(np.mean(p < alpha))
    assert 0.72 < power < 0.86


def test_mde_closed_form_for_a_fixed_discordance() -> None:
    # With psi fixed: n d^2 = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 (Connor 1987), directly.
    n, psi = 250, 0.3
    delta = minimum_detectable_effect(n, 0.5, discordance=psi)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    assert n * delta**2 == pytest.approx(
        (za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2
    )


def test_mde_shrinks_with_n_and_respects_its_bounds() -> None:
    values = [minimum_detectable_effect(n, 0.7) for n in (10, 30, 100, 300, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.6  # n = 10 detects only huge changes
    assert minimum_detectable_effect(10, 0.5) == 1.0  # from 50 %: nothing, at 80 % power
    # never below the exact test's floor: 6 one-sided discordant pairs at alpha = 0.05
    assert minimum_detectable_effect(100, 0.99, discordance=0.0001) == pytest.approx(0.06)
    assert minimum_detectable_effect(100, 1.0) >= 0.06
    with pytest.raises(ValueError):
        minimum_detectable_effect(0, 0.5)


def test_small_n_warning() -> None:
    mde = minimum_detectable_effect(10, 0.5, discordance=0.3)
    assert small_n_warning(10, mde) == "n=10: deltas this small are noise (MDE ±60 pts)"
    assert small_n_warning(30, mde) is None
    assert small_n_warning(30, mde, min_n=50) is not None
