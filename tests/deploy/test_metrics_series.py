"""The series dashboards and alerts rely on: experiment state, SRM, zero-initialised counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from analysis.types import Decision, SRMResult
from router.control.controller import ControllerMetrics
from router.metrics import ExperimentInfo, GatewayMetrics


def _samples(registry: CollectorRegistry, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset(s.labels.items()): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_experiment_state_follows_the_config_and_old_states_disappear() -> None:
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    signals = ("thumbs_up", "resolved")
    m.set_config(3, [ExperimentInfo("bot", "a", "running", 0.1, signals),
                     ExperimentInfo("bot", "old", "rolled_back", None)])  # fmt: skip
    states = _samples(registry, "abgate_experiment_state")
    assert states == {
        frozenset({("route", "bot"), ("experiment", "a"), ("state", "running")}): 1.0,
        frozenset({("route", "bot"), ("experiment", "old"), ("state", "rolled_back")}): 1.0,
    }
    share = _samples(registry, "abgate_experiment_treatment_share_ratio")
    assert share == {frozenset({("route", "bot"), ("experiment", "a")}): 0.1}
    feedback = _samples(registry, "abgate_feedback_total")
    assert len(feedback) == 4 and set(feedback.values()) == {0.0}  # 2 arms x 2 signals
    assert _samples(registry, "abgate_circuit_breaker_trips_total") == {
        frozenset({("experiment", "a")}): 0.0,
        frozenset({("experiment", "old")}): 0.0,
    }
    # paused, then the old one deleted: one state per experiment, nothing left of "old"
    m.set_config(4, [ExperimentInfo("bot", "a", "paused", 0.1, signals)])
    assert _samples(registry, "abgate_experiment_state") == {
        frozenset({("route", "bot"), ("experiment", "a"), ("state", "paused")}): 1.0
    }
    # promoted and replaced on its route by a new experiment: its share series goes
    m.set_config(5, [ExperimentInfo("bot", "a", "promoted", None),
                     ExperimentInfo("bot", "b", "running", 0.05, signals)])  # fmt: skip
    assert _samples(registry, "abgate_experiment_treatment_share_ratio") == {
        frozenset({("route", "bot"), ("experiment", "b")}): 0.05
    }
    assert _samples(registry, "abgate_config_version") == {frozenset(): 5.0}


def test_counters_with_known_reasons_start_at_zero() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    text = generate_latest(registry).decode()
    for line in (
        'abgate_events_dropped_total{reason="buffer_full"} 0.0',
        'abgate_events_dropped_total{reason="buffer_bytes"} 0.0',
        'abgate_events_dropped_total{reason="shutdown"} 0.0',
        'abgate_events_dropped_total{reason="error"} 0.0',
        'abgate_redis_errors_total{component="events"} 0.0',
        'abgate_redis_errors_total{component="config"} 0.0',
        'abgate_redis_errors_total{component="feedback"} 0.0',
        'abgate_errors_total{component="proxy"} 0.0',
    ):
        assert line in text, line


def _decision(action: str, srm: SRMResult | None) -> Decision:
    return Decision.model_validate(
        {"action": action, "reasons": [], "at": 0.0, "share": 10.0, "srm": srm}
    )


def test_controller_exports_srm_and_decision_counters_from_zero() -> None:
    registry = CollectorRegistry()
    m = ControllerMetrics(registry)
    m.evaluated("exp", _decision("hold", SRMResult(status="insufficient_data")))
    decisions = _samples(registry, "abgate_controller_decisions_total")
    assert {dict(k)["action"] for k in decisions} == {"advance", "promote", "rollback", "pause"}
    assert set(decisions.values()) == {0.0}
    assert _samples(registry, "abgate_experiment_srm_mismatch") == {
        frozenset({("experiment", "exp")}): 0.0
    }
    assert _samples(registry, "abgate_experiment_srm_p_value") == {}  # never tested yet
    broken = SRMResult(status="ok", p_value=1e-6, mismatch=True)
    m.evaluated("exp", _decision("pause", broken))
    assert (
        _samples(registry, "abgate_experiment_srm_mismatch")[frozenset({("experiment", "exp")})]
        == 1.0
    )
    assert _samples(registry, "abgate_experiment_srm_p_value") == {
        frozenset({("experiment", "exp")}): 1e-6
    }
    # too few new units later: the last tested p-value stays
    m.evaluated("exp", _decision("hold", SRMResult(status="insufficient_data")))
    assert _samples(registry, "abgate_experiment_srm_p_value") == {
        frozenset({("experiment", "exp")}): 1e-6
    }
    m.forget({"exp"})  # still running or paused: kept
    assert _samples(registry, "abgate_experiment_srm_mismatch")
    m.forget(set())  # ended, deleted, or this controller lost the lock
    assert _samples(registry, "abgate_experiment_srm_mismatch") == {}
    assert _samples(registry, "abgate_experiment_srm_p_value") == {}
