"""The compiled, immutable routing table: what the request path reads.

The gateway compiles the set of experiments into a `RoutingTable` once per config change; the
request path only does dictionary look-ups on it. A new table replaces the old one by a single
reference assignment, so a request sees the old config or the new one, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from analysis.types import BUILTIN_SIGNALS
from router.experiments import (
    LIVE_STATES,
    Arm,
    DefaultUpstream,
    Experiment,
    MissingUnitPolicy,
    Target,
)
from router.signals.redact import Redactor


@dataclass(frozen=True, slots=True)
class CompiledArm:
    """Everything the request path needs about one arm, computed once per config change."""

    arm: Arm
    target: Target
    urls: tuple[str, ...]
    model_json: bytes  # the upstream model name as a JSON string literal
    headers_arm: bytes  # value of X-ABGate-Arm


@dataclass(frozen=True, slots=True)
class CompiledExperiment:
    experiment: Experiment
    name: str
    version: int
    alias_json: bytes  # the route alias as a JSON string literal
    name_header: bytes
    salt: bytes
    bps: int
    unit_headers: tuple[bytes, ...]
    use_body_user: bool
    policy: MissingUnitPolicy
    overrides: dict[str, Arm]
    control: CompiledArm
    treatment: CompiledArm
    ttl: int  # request index TTL (feedback window)
    regen: float  # regeneration window; 0 when detection is off
    signals: frozenset[str]
    capture_rate: float = 0.0  # 0: capture off
    redactor: Redactor | None = None

    def arm(self, arm: Arm) -> CompiledArm:
        return self.treatment if arm == "treatment" else self.control


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The immutable routing snapshot that one config version compiles to."""

    version: int
    routes: dict[str, CompiledExperiment] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    default_upstream: DefaultUpstream | None = None
    # Upstream models of the experiments' arms, which `direct_arm_models` may refuse to send
    # to the default upstream (a client naming one would bypass the experiment): treatments'
    # (less any that is also a control's), and every arm's.
    treatment_models: frozenset[str] = frozenset()
    arm_models: frozenset[str] = frozenset()


def _compile_arm(arm: Arm, target: Target) -> CompiledArm:
    return CompiledArm(
        arm=arm,
        target=target,
        urls=target.urls,
        model_json=orjson.dumps(target.model),
        headers_arm=arm.encode(),
    )


def compile_table(
    version: int,
    experiments: list[Experiment],
    default_upstream: DefaultUpstream | None,
    default_unit_headers: list[str],
    default_feedback_window: int = 7 * 86400,
) -> RoutingTable:
    """Build the routing table. Final experiments (promoted, rolled back) keep their route
    unless a live experiment on the same route replaces them."""
    routes: dict[str, CompiledExperiment] = {}
    ordered = sorted(experiments, key=lambda e: e.state in LIVE_STATES)
    for exp in ordered:  # live experiments last, so they win their route
        headers = exp.unit_id_headers or default_unit_headers
        routes[exp.route] = CompiledExperiment(
            experiment=exp,
            name=exp.name,
            version=exp.version,
            alias_json=orjson.dumps(exp.route),
            name_header=exp.name.encode(),
            salt=exp.hash_salt.encode(),
            bps=exp.effective_bps,
            unit_headers=tuple(h.encode("latin-1") for h in headers),
            use_body_user=exp.use_body_user,
            policy=exp.missing_unit_policy,
            # Overrides are for QA while an experiment is live; a rollback or promotion wins.
            overrides=dict(exp.overrides) if exp.state in ("running", "paused") else {},
            control=_compile_arm("control", exp.control),
            treatment=_compile_arm("treatment", exp.treatment),
            ttl=exp.feedback_window_seconds or default_feedback_window,
            regen=exp.regeneration_window_seconds if exp.detect_regenerations else 0.0,
            signals=frozenset(BUILTIN_SIGNALS) | frozenset(exp.signals),
            capture_rate=exp.capture.rate if exp.capture else 0.0,
            redactor=Redactor.from_config(exp.capture.redact) if exp.capture else None,
        )
    controls = frozenset(e.control.model for e in experiments)
    treatments = frozenset(e.treatment.model for e in experiments)
    return RoutingTable(
        version=version,
        routes=routes,
        experiments={e.name: e for e in experiments},
        default_upstream=default_upstream,
        treatment_models=treatments - controls,
        arm_models=treatments | controls,
    )
