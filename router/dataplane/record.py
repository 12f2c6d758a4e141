"""After a request: its outcome goes to the Prometheus metrics, the circuit breaker, the capture
writer and (as an event) the background writer. Nothing here awaits.

A client that went away (`client_closed`) is counted as such, never as an upstream error or a
breaker failure. Requests of an ended experiment (promoted or rolled back: its route still
serves the winner) go to the metrics and the breaker, and to Redis only as a request index
entry (feedback for them is answered, not counted): its results in Redis are final."""

from __future__ import annotations

import time

from router.dataplane.outcome import Outcome, OutcomeKind, breaker_failure, status_class
from router.dataplane.plan import Plan
from router.dataplane.ports import GatewayPort
from router.dataplane.routing import CompiledArm
from router.signals.events import Event

#: States whose requests are served but no longer counted in Redis (metrics still count them)
ENDED_STATES = frozenset({"promoted", "rolled_back"})


def record(gw: GatewayPort, plan: Plan, rid: str, t0: float, out: Outcome) -> None:
    gw.model_inflight[plan.model] -= 1
    exp = plan.exp
    if exp is not None and plan.arm is not None and plan.arm.arm == "treatment":
        config = exp.experiment
        tripped = gw.breakers.record(
            config.name, config.version, config.circuit_breaker, breaker_failure(out.kind)
        )
        if tripped is not None:
            gw.trip(config.name, tripped)
    elapsed = time.perf_counter() - t0
    exp_name = exp.experiment.name if exp is not None else ""
    arm = plan.arm.arm if plan.arm is not None else ""
    status = out.status or 500
    error = out.error
    metrics = gw.metrics
    metrics.request_counter(plan.route, exp_name, arm, status_class(status, out.kind)).inc()
    cost = _observe(gw, plan, exp_name, arm, elapsed, out)
    if out.kind is OutcomeKind.CLIENT_CLOSED:
        metrics.client_closed.labels(plan.route, exp_name, arm).inc()
    elif error:
        metrics.upstream_errors.labels(plan.route, exp_name, arm, error).inc()
    if exp is None:
        return
    # an ended experiment's results are final (router/control/retention.py): its requests are
    # only indexed, so that feedback for them is answered (and not counted)
    counted = exp.experiment.state not in ENDED_STATES
    if counted and out.captured is not None and status == 200 and not error:
        gw.capture_request(exp, arm, plan.model, rid, plan.raw, out.captured, plan.stream)
    gw.inflight.discard(rid)
    gw.writer.submit(
        Event(
            request_id=rid,
            ts=time.time(),
            experiment=exp_name,
            route=plan.route,
            arm=arm,
            unit=plan.unit,
            model=plan.model,
            status=status,
            error=error,
            stream=plan.stream,
            latency_ms=elapsed * 1000.0,
            ttft_ms=out.ttft * 1000.0 if out.ttft >= 0 else -1.0,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            cost_usd=cost,
            ttl=exp.ttl,
            regen=exp.regen,
            fp=plan.fingerprint,
            counted=counted,
            period=exp.experiment.period,
        )
    )


def _observe(
    gw: GatewayPort, plan: Plan, exp_name: str, arm: str, elapsed: float, out: Outcome
) -> float:
    """The arm's latency, time to first token, tokens and cost; returns the cost in USD."""
    series = gw.metrics.arm_series(plan.route, exp_name, arm)
    series.duration.observe(elapsed)
    if out.ttft >= 0:
        series.ttft.observe(out.ttft)
    if not (out.prompt_tokens or out.completion_tokens):
        return 0.0
    series.prompt_tokens.inc(out.prompt_tokens)
    series.completion_tokens.inc(out.completion_tokens)
    if plan.arm is None:
        return 0.0
    # on a fallback control served the request: its tokens, at control's prices
    priced = plan.exp.control if out.fell_back and plan.exp is not None else plan.arm
    cost = _cost(priced, out)
    if cost:
        series.cost.inc(cost)
    return cost


def _cost(arm: CompiledArm, out: Outcome) -> float:
    t = arm.target
    return (
        out.prompt_tokens * t.prompt_price_per_million
        + out.completion_tokens * t.completion_price_per_million
    ) / 1e6
