"""The guardrail simulations (analysis/simulate_guardrails.py), a few replications each: the
real policy rolls back a 10x error rate and a slower p95, and leaves an A/A alone."""

from __future__ import annotations

import numpy as np

from analysis.simulate_guardrails import (
    GuardrailModel,
    latency_buckets,
    simulate_guardrail_policy,
)
from analysis.stats.bernoulli import latency_bucket
from analysis.types import GuardrailSpec, Policy

ERRORS = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=0.01)])
P95 = Policy(guardrails=[GuardrailSpec(metric="latency_p95_ms", margin=0.25, relative=True)])


def test_buckets_on_arrays_match_the_scalar_ones() -> None:
    ms = np.array([0.0, 0.5, 1.0, 1.02, 799.9, 800.0, 30_000.0, 1e13])
    assert latency_buckets(ms).tolist() == [latency_bucket(float(v)) for v in ms]


def test_a_tenfold_error_rate_is_rolled_back_within_a_few_hundred_requests() -> None:
    rng = np.random.default_rng(10)
    for _ in range(2):
        run = simulate_guardrail_policy(GuardrailModel(error_treatment=0.10), ERRORS, rng,
                                        look_every_hours=1 / 12, horizon_hours=36)  # fmt: skip
        assert run.action == "rollback", run
        assert "error_rate" in run.reasons[0] and run.treatment_requests < 400


def test_an_aa_is_not_rolled_back() -> None:
    rng = np.random.default_rng(11)
    run = simulate_guardrail_policy(GuardrailModel(), ERRORS, rng, look_every_hours=1 / 12,
                                    horizon_hours=24)  # fmt: skip
    assert run.action == "hold", run
    assert run.treatment_requests > 0


def test_a_slower_p95_is_rolled_back_and_more_timeouts_are_not() -> None:
    rng = np.random.default_rng(12)
    slow = GuardrailModel(days=14, latency_scale_treatment=1.6)
    run = simulate_guardrail_policy(slow, P95, rng, look_every_hours=2.0)
    assert run.action == "rollback" and "latency_p95_ms" in run.reasons[0], run
    timeouts = GuardrailModel(days=14, timeout_treatment=0.004)
    run = simulate_guardrail_policy(timeouts, P95, rng, look_every_hours=2.0)
    assert run.action == "hold", run
