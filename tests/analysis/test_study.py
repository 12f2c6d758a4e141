"""A small version of the simulation study (bench/stats_study.py) as an acceptance check."""

from __future__ import annotations

import numpy as np

from analysis.simulate import (
    PolicyModel,
    StudyModel,
    decisions,
    simulate,
    simulate_policy,
    simulate_srm_ramp,
)
from analysis.types import GuardrailSpec, Policy


def test_sequential_test_controls_false_alarms_where_peeking_does_not() -> None:
    rng = np.random.default_rng(20261128)
    reps = 300
    sequential = naive = 0
    for _ in range(reps):
        d = decisions(simulate(StudyModel(), rng), tau=0.05)
        sequential += bool(d.sequential[-1])
        naive += bool(d.naive.any())
    assert sequential / reps < 0.08
    assert naive / reps > 0.08
    assert naive > sequential


def test_sequential_test_detects_the_planted_drop() -> None:
    rng = np.random.default_rng(7)
    hits = sum(
        bool(decisions(simulate(StudyModel(m_treatment=0.65), rng), tau=0.05).sequential[-1])
        for _ in range(40)
    )
    assert hits >= 20  # power is reported by the study; here: it clearly has some


def test_the_whole_policy_rolls_back_a_harmful_winner_and_promotes_a_harmless_one() -> None:
    """Scenario 5 of the study, a few replications: thumbs-up 70 % -> 75 % with the error rate
    1 % -> 2.5 % (1-point margin) is never promoted; with 1 % in both arms it is."""
    policy = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)])
    rng = np.random.default_rng(16)
    harmful = PolicyModel(m_treatment=0.75, error_treatment=0.025)
    for _ in range(2):
        run = simulate_policy(harmful, policy, rng)
        assert run.action != "promote", run
    run = simulate_policy(PolicyModel(m_treatment=0.75), policy, rng)
    assert run.action == "promote", run
    assert "significantly better" in run.reasons[0]


def test_an_aa_with_60_second_looks_takes_no_action_in_its_first_hours() -> None:
    policy = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)])
    rng = np.random.default_rng(60)
    for _ in range(3):
        run = simulate_policy(PolicyModel(), policy, rng, look_every_hours=1 / 60, horizon_hours=6)
        assert run.action == "hold", run


def test_srm_checked_every_minute_through_correct_ramps_does_not_pause() -> None:
    """Scenario 8 of the study, reduced: correct ramps 5 -> 10 -> 25 -> 50 % over 7 days with the
    policy's SRM check every minute: no pause (the old chi-square rule pauses some); a 45/55
    split at 50 % is paused."""
    rng = np.random.default_rng(606)
    runs = [simulate_srm_ramp(Policy(), rng, days=7) for _ in range(40)]
    assert not any(r.paused for r in runs)
    assert all(r.share == 50.0 for r in runs)  # every run got through the ramp
    assert sum(r.chi2_paused for r in runs) >= 1
    broken = [simulate_srm_ramp(Policy(), rng, days=7, delivered=0.9) for _ in range(4)]
    assert all(r.paused for r in broken), broken
