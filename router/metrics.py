"""The gateway's Prometheus metrics, on an injected `CollectorRegistry`.

Names follow client_python conventions: `abgate_` namespace, base units, `_total` on counters.
Labels are route, experiment, arm and status class, never a user; `replica` is a model server's
base URL. Every series describes this gateway instance; Prometheus adds the `instance` label.
Label children are cached per label tuple so the request path does one dictionary look-up per
metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_ARM_LABELS = ("route", "experiment", "arm")
_ARMS = ("control", "treatment")

# Label values exported at 0 from the start, so that dashboards and alerts see a series (and
# rate() sees the first increment) before anything happened.
DROP_REASONS = ("buffer_full", "buffer_bytes", "shutdown", "error")
REDIS_COMPONENTS = ("events", "config", "feedback", "health")
ERROR_COMPONENTS = ("proxy", "health", "config_watch", "event_writer")


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    """What the metrics export of one configured experiment."""

    route: str
    name: str
    state: str
    share: float | None  # applied treatment share (0-1); None when another owns the route
    signals: tuple[str, ...] = ()


@dataclass(slots=True)
class _ArmSeries:
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    cost: Counter


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "abgate_requests_total",
            "Proxied requests by route, experiment, arm and status class (2xx, 4xx, 5xx).",
            [*_ARM_LABELS, "status_class"],
            registry=registry,
        )
        self.duration = Histogram(
            "abgate_request_duration_seconds",
            "Time from request received to last response byte sent.",
            _ARM_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "abgate_time_to_first_token_seconds",
            "Time from request received to the first content chunk (streaming requests).",
            _ARM_LABELS,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "abgate_tokens_total",
            "Tokens reported by the upstream's usage, by kind (prompt, completion).",
            [*_ARM_LABELS, "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "abgate_cost_usd_total",
            "Cost of proxied requests in US dollars, from the per-target token prices.",
            _ARM_LABELS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "abgate_upstream_errors_total",
            "Upstream failures by reason (connect, timeout, status_<code>, stream_*, fallback_*, "
            "internal, ...); a client that went away is not one (abgate_client_closed_total).",
            [*_ARM_LABELS, "reason"],
            registry=registry,
        )
        self.client_closed = Counter(
            "abgate_client_closed_total",
            "Requests whose client went away mid-stream (or stopped reading): the client's "
            "choice, counted per arm, never an upstream error.",
            _ARM_LABELS,
            registry=registry,
        )
        self.rejected = Counter(
            "abgate_rejected_requests_total",
            "Requests refused by the gateway before reaching an upstream, by reason.",
            ["reason"],
            registry=registry,
        )
        self.event_queue_depth = Gauge(
            "abgate_event_queue_depth",
            "Events waiting to be written to Redis.",
            registry=registry,
        )
        self.events_written = Counter(
            "abgate_events_written_total", "Events written to Redis.", registry=registry
        )
        self.events_dropped = Counter(
            "abgate_events_dropped_total",
            "Events dropped because the buffer was full (Redis away too long: buffer_full "
            "for the count, buffer_bytes for the memory bound), at shutdown, or on an error.",
            ["reason"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "abgate_redis_errors_total",
            "Failed Redis operations, by component (events, config, feedback, health).",
            ["component"],
            registry=registry,
        )
        self.config_version = Gauge(
            "abgate_config_version",
            "Version of the experiment configuration this gateway instance applies.",
            registry=registry,
        )
        self.experiment_share = Gauge(
            "abgate_experiment_treatment_share_ratio",
            "Share of units the gateway sends to treatment (0-1), per experiment.",
            ["route", "experiment"],
            registry=registry,
        )
        self.experiment_state = Gauge(
            "abgate_experiment_state",
            "1 for the experiment's current lifecycle state (draft, running, paused, promoted, "
            "rolled_back).",
            ["route", "experiment", "state"],
            registry=registry,
        )
        self.feedback = Counter(
            "abgate_feedback_total",
            "Feedback signals recorded (duplicates not counted), by signal.",
            [*_ARM_LABELS, "signal"],
            registry=registry,
        )
        self.units = Gauge(
            "abgate_experiment_units",
            "Distinct randomisation units (users or tenants) seen per arm.",
            _ARM_LABELS,
            registry=registry,
        )
        self.breaker_trips = Counter(
            "abgate_circuit_breaker_trips_total",
            "Times this gateway instance's circuit breaker opened for an experiment's treatment.",
            ["experiment"],
            registry=registry,
        )
        self.replica_healthy = Gauge(
            "abgate_replica_healthy",
            "1 while a model server replica passes its health checks and is not ejected.",
            ["replica"],
            registry=registry,
        )
        self.replica_state = Gauge(
            "abgate_replica_state",
            "1 for a model server replica's state: healthy, unhealthy (it fails its health "
            "check) or ejected (outlier ejection after failed requests).",
            ["replica", "state"],
            registry=registry,
        )
        self.replica_panic_requests = Counter(
            "abgate_replica_panic_requests_total",
            "Requests sent to a model server replica that was out because no replica of the "
            "target serving the model was in (panic mode).",
            ["replica"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "abgate_redis_up",
            "1 while this gateway instance's background services reach Redis, 0 during an outage.",
            registry=registry,
        )
        self.replica_outstanding = Gauge(
            "abgate_replica_outstanding_requests",
            "Requests this gateway instance has in flight to a model server replica.",
            ["replica"],
            registry=registry,
        )
        self.adapter_state = Gauge(
            "abgate_adapter_state",
            "1 for the adapter's state on a model server replica (loading, ready, failed, ...).",
            ["adapter", "replica", "state"],
            registry=registry,
        )
        self.errors = Counter(
            "abgate_errors_total",
            "Unexpected errors caught at the top of a request or a background loop.",
            ["component"],
            registry=registry,
        )
        self._arm_cache: dict[tuple[str, str, str], _ArmSeries] = {}
        self._req_cache: dict[tuple[str, str, str, str], Counter] = {}
        self._states: dict[str, tuple[str, str, str]] = {}
        self._shares: dict[str, tuple[str, str]] = {}
        for reason in DROP_REASONS:
            self.events_dropped.labels(reason)
        for component in REDIS_COMPONENTS:
            self.redis_errors.labels(component)
        for component in ERROR_COMPONENTS:
            self.errors.labels(component)

    def set_config(self, version: int, experiments: Iterable[ExperimentInfo]) -> None:
        """Export a newly applied configuration: its version, each experiment's state (one
        child set to 1, the previous state's child removed) and applied share; experiments that
        left the configuration lose their series. Feedback and breaker counters start at 0 so
        that a rate is defined before the first signal."""
        self.config_version.set(version)
        states: dict[str, tuple[str, str, str]] = {}
        shares: dict[str, tuple[str, str]] = {}
        for exp in experiments:
            states[exp.name] = (exp.route, exp.name, exp.state)
            self.experiment_state.labels(*states[exp.name]).set(1)
            self.breaker_trips.labels(exp.name)
            if exp.share is None:
                continue
            shares[exp.name] = (exp.route, exp.name)
            self.experiment_share.labels(exp.route, exp.name).set(exp.share)
            for arm in _ARMS:
                for signal in exp.signals:
                    self.feedback.labels(exp.route, exp.name, arm, signal)
        for name, labels in self._states.items():
            if states.get(name) != labels:
                self.experiment_state.remove(*labels)
        for name, pair in self._shares.items():
            if shares.get(name) != pair:
                self.experiment_share.remove(*pair)
        self._states, self._shares = states, shares

    def arm_series(self, route: str, experiment: str, arm: str) -> _ArmSeries:
        key = (route, experiment, arm)
        series = self._arm_cache.get(key)
        if series is None:
            series = _ArmSeries(
                duration=self.duration.labels(*key),
                ttft=self.ttft.labels(*key),
                prompt_tokens=self.tokens.labels(*key, "prompt"),
                completion_tokens=self.tokens.labels(*key, "completion"),
                cost=self.cost.labels(*key),
            )
            self._arm_cache[key] = series
        return series

    def request_counter(self, route: str, experiment: str, arm: str, status_class: str) -> Counter:
        key = (route, experiment, arm, status_class)
        child = self._req_cache.get(key)
        if child is None:
            child = self.requests.labels(*key)
            self._req_cache[key] = child
        return child
