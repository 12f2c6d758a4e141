"""The always-valid SRM test (analysis/stats/srm.py) and the policy's use of it: valid at any
number of looks, exact at small counts, spent over ramp steps, powerful against a real
mismatch, and fed the right counts after a share decrease (issue 16, point 6)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.policy import decide, new_units, srm_check
from analysis.stats.srm import log_bayes_factor, srm_test, step_weight
from analysis.types import ArmSnapshot, ExperimentSnapshot, Policy, StepState, UnitSums


def _paths(rng: np.random.Generator, reps: int, n: int, share: float) -> tuple[np.ndarray, ...]:
    """`reps` sequences of `n` new units under a correct split: cumulative (control, treatment)
    after every unit."""
    t = np.cumsum(rng.random((reps, n)) < share, axis=1)
    c = np.arange(1, n + 1) - t
    return c, t


@pytest.mark.parametrize("share", [0.05, 0.5])
def test_a_correct_split_checked_after_every_unit_rejects_at_most_alpha(share: float) -> None:
    """Anytime validity by simulation: 2,000 units, a look after each, alpha = 5 % (large, to be
    measurable): the always-valid test ever rejects in fewer than 5 % of 1,000 runs, while a
    chi-square at every look (the old rule) rejects far more often."""
    rng = np.random.default_rng(61)
    reps, n, alpha = 1000, 2000, 0.05
    c, t = _paths(rng, reps, n, share)
    ever = (log_bayes_factor(c, t, share) >= np.log(1 / alpha)).any(axis=1)
    rate = ever.mean()
    assert rate <= alpha, rate  # Ville's inequality; in practice well below
    total = c + t
    exp_t = total * share
    chi2 = (t - exp_t) ** 2 / exp_t + (c - (total - exp_t)) ** 2 / (total - exp_t)
    peeking = ((stats.chi2.sf(chi2, 1) < alpha) & (total >= 100)).any(axis=1).mean()
    assert peeking > 3 * alpha, peeking


def test_step_weights_spend_the_threshold_once() -> None:
    assert sum(step_weight(k) for k in range(1, 10_000)) == pytest.approx(1, abs=1e-3)
    one, four = srm_test(9_000, 1_200, 0.10, step=1), srm_test(9_000, 1_200, 0.10, step=4)
    assert one.log_bayes_factor == four.log_bayes_factor
    assert one.p_value is not None and one.p_value < 1e-3
    assert four.p_value == pytest.approx(one.p_value * 10)  # weights 1/(1·2) vs 1/(4·5)


def test_a_real_mismatch_is_detected() -> None:
    """45 % delivered where 50 % is configured, even at a late step."""
    assert srm_test(5_500, 4_500, 0.5, step=4).mismatch
    assert not srm_test(5_050, 4_950, 0.5, step=4).mismatch
    rng = np.random.default_rng(45)
    c, t = _paths(rng, 200, 6000, 0.45)
    limit = np.log(1 / (0.001 * step_weight(4)))
    hit = log_bayes_factor(c, t, 0.5) >= limit
    assert hit.any(axis=1).mean() >= 0.95
    assert np.median(np.argmax(hit, axis=1)) < 4000  # new units to detection


def test_small_counts_are_exact_not_anti_conservative() -> None:
    """The Bayes factor is the Beta-binomial likelihood over the binomial one at any count; at
    30 units a 1 % share never pauses (the chi-square flagged a single treatment unit)."""
    for t_units in range(4):
        r = srm_test(30 - t_units, t_units, 0.01)
        bf = stats.betabinom.pmf(t_units, 30, 1, 99) / stats.binom.pmf(t_units, 30, 0.01)
        assert r.log_bayes_factor == pytest.approx(np.log(bf))
        assert not r.mismatch
    assert stats.chisquare([29, 1], [29.7, 0.3]).pvalue < 0.25  # the old approximation


def _snap(share: float, c: int, t: int, c_moved: int = 0, t_moved: int = 0) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        experiment="e", route="r", treatment_percent=share, taken_at=0,
        control=ArmSnapshot(units=UnitSums(units=c, moved_in=c_moved)),
        treatment=ArmSnapshot(units=UnitSums(units=t, moved_in=t_moved)),
    )  # fmt: skip


def test_a_share_decrease_does_not_count_units_moving_into_control() -> None:
    """25 % -> 10 %: treatment users with hash positions in [10, 25) come back in control; the
    gateway counts them in control's `moved_in`, and the step subtracts them."""
    policy = Policy()
    step = StepState(share=10, started_at=0, control_units_at_start=3000,
                     treatment_units_at_start=1000, moved_in_at_start=200,
                     control_moved_in_at_start=0, index=5)  # fmt: skip
    # in the step: 1,800 new control units, 200 new treatment units, 1,500 moved into control
    snap = _snap(10, 3000 + 1800 + 1500, 1200, c_moved=1500, t_moved=200)
    assert new_units(snap, step) == (1800, 200, 0, 1500)
    d = decide(policy, snap, step, 7200.0, [5, 10, 25, 50, 100])
    assert d.action != "pause", d.reasons
    assert d.srm is not None and d.srm.status == "ok" and not d.srm.mismatch
    assert d.units["moved_to_control_in_step"] == 1500
    # counted as arrivals they would look like 5.7 % in treatment: a false pause
    assert srm_check(policy, 3300, 200, 10, 5).mismatch
