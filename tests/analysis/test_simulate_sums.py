"""The simulation's running sums over users (analysis/simulate.py) equal a recomputation over
every user, at every look, cumulative and per period; with a drift in both arms of an A/A the
per-period estimate stays near 0 where the pooled one does not."""

from __future__ import annotations

import numpy as np

from analysis.simulate import (
    SIM_FIELDS,
    PolicyModel,
    RunningSums,
    recomputed,
    simulate_policy,
)
from analysis.types import GuardrailSpec, Policy


def test_running_sums_equal_the_recomputation() -> None:
    rng = np.random.default_rng(5)
    n = 50
    totals = {f: np.zeros(n) for f in SIM_FIELDS}
    running = RunningSums()
    for _ in range(200):
        users = rng.integers(0, n, rng.integers(1, 8))
        touched = np.unique(users)
        running.units += int(np.count_nonzero(totals["requests"][touched] == 0))
        old = {f: totals[f][touched] for f in SIM_FIELDS}
        for f in SIM_FIELDS:
            np.add.at(totals[f], users, rng.integers(0, 3, len(users)).astype(float))
        np.add.at(totals["requests"], users, 1.0)
        running.change(old, {f: totals[f][touched] for f in SIM_FIELDS})
        assert running.snapshot() == recomputed(totals, int(np.count_nonzero(totals["requests"])))


def test_a_whole_run_keeps_its_sums_exact_through_the_ramp() -> None:
    """`check_sums` recomputes every sum over all users at every look (cumulative, and the
    current period's) and fails the run on any difference; the run goes through every step."""
    policy = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)],
                    min_units_per_arm=40)  # fmt: skip
    model = PolicyModel(days=3, users_per_day=600)
    run = simulate_policy(model, policy, np.random.default_rng(3), look_every_hours=2,
                          check_sums=True)  # fmt: skip
    assert run.share == 50.0
    pooled = simulate_policy(model, policy, np.random.default_rng(3), look_every_hours=2,
                             check_sums=True, by_period=False)  # fmt: skip
    assert pooled.share == 50.0


def test_a_drift_biases_the_pooled_estimate_and_not_the_periods() -> None:
    """An A/A whose thumbs-up rate rises 8 points over 4 days in both arms, ramped 5 -> 50 %:
    at day 3 the pooled difference is positive on average, the per-period one about 0."""
    policy = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)],
                    min_units_per_arm=60, min_step_seconds=6 * 3600)  # fmt: skip
    model = PolicyModel(days=4, users_per_day=1500, drift=0.08)
    z = {True: [], False: []}
    for seed in range(12):
        for by_period in (True, False):
            run = simulate_policy(model, policy, np.random.default_rng(seed), look_every_hours=3,
                                  by_period=by_period, estimate_at_hours=72)  # fmt: skip
            z[by_period].append(run.estimate / run.estimate_se)
    assert np.mean(z[False]) > 0.5
    assert abs(np.mean(z[True])) < np.mean(z[False]) / 2
