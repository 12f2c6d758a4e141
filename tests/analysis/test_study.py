"""A small version of the simulation study (bench/stats_study.py) as an acceptance check."""

from __future__ import annotations

import numpy as np

from analysis.simulate import StudyModel, decisions, simulate


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
