"""Guardrails through the whole policy (analysis/policy.py `decide`) on a simulated population:
error rates and latencies, with the aggregates the gateway keeps.

Users arrive uniformly over `days` (`users_per_day` a day), each with a hash position in
[0, 100) so that a share increase moves some of them from control to treatment as the gateway
does; each makes 1 + Poisson(`extra_requests`) requests, the first at arrival and the others
uniform over the rest of `days`. A request fails with its arm's error probability; its latency
is log-normal (median `latency_median_ms`, log-sd `latency_sigma`, times the arm's scale), or
`timeout_ms` with the arm's timeout probability. At every look the unit-level sums of requests
and errors and the per-arm latency histogram (router/signals/lua.py) are handed to `decide`,
whose advances are applied (a new step, as the controller keeps it) until a final action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.policy import decide
from analysis.simulate import HOURS_PER_DAY, PolicyRun, request_times
from analysis.types import (
    LATENCY_BUCKET_RATIO,
    LATENCY_BUCKETS_MAX,
    ArmSnapshot,
    ArmTotals,
    ExperimentSnapshot,
    LookMemory,
    Policy,
    StepState,
    UnitSums,
)


@dataclass(frozen=True, slots=True)
class GuardrailModel:
    days: float = 2.0
    users_per_day: int = 2000
    extra_requests: float = 3.0
    error_control: float = 0.01
    error_treatment: float = 0.01
    latency_median_ms: float = 800.0
    latency_sigma: float = 0.6
    latency_scale_treatment: float = 1.0  # 1.4: every treatment latency 40 % longer
    timeout_ms: float = 30_000.0
    timeout_control: float = 0.002
    timeout_treatment: float = 0.002


def latency_buckets(ms: NDArray[Any]) -> NDArray[Any]:
    """`analysis.stats.bernoulli.latency_bucket` on an array."""
    k = np.floor(np.log(np.maximum(ms, 1.0)) / np.log(LATENCY_BUCKET_RATIO)).astype(np.int64)
    out: NDArray[Any] = np.minimum(k, LATENCY_BUCKETS_MAX)
    return out


def _requests(model: GuardrailModel, rng: np.random.Generator, last: float) -> dict[str, Any]:
    """The population and its requests in time order (both arms' outcomes drawn for each, so
    that a unit moved between arms draws from its current arm)."""
    total = model.days * HOURS_PER_DAY
    n_users = round(last / HOURS_PER_DAY * model.users_per_day)
    arrival = rng.random(n_users) * last
    user, t = request_times(rng, arrival, model.extra_requests, total, last)
    m = len(user)
    edraw, tdraw = rng.random(m), rng.random(m)
    base = model.latency_median_ms * np.exp(model.latency_sigma * rng.standard_normal(m))
    err = np.stack([edraw < model.error_control, edraw < model.error_treatment])
    timeout = np.stack([tdraw < model.timeout_control, tdraw < model.timeout_treatment])
    latency = np.stack([base, base * model.latency_scale_treatment])
    latency = np.where(timeout, model.timeout_ms, latency)
    return {
        "n_users": n_users,
        "position": rng.random(n_users) * 100,
        "user": user,
        "t": t,
        "errors": err.astype(np.float64),
        "bucket": latency_buckets(latency),
    }


def simulate_guardrail_policy(
    model: GuardrailModel,
    policy: Policy,
    rng: np.random.Generator,
    *,
    start_share: float = 5.0,
    ramp_steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0),
    look_every_hours: float = 1 / 60,
    horizon_hours: float | None = None,
) -> PolicyRun:
    """Run the real `decide` at every look until a final action (promote, rollback, pause) or
    the horizon ("hold"); `treatment_requests` counts the treatment's requests at that look."""
    total = model.days * HOURS_PER_DAY
    last = total if horizon_hours is None else min(total, horizon_hours)
    r = _requests(model, rng, last)
    n_users, position, user, t = r["n_users"], r["position"], r["user"], r["t"]
    req = np.zeros((2, n_users))
    err = np.zeros((2, n_users))
    hist = np.zeros((2, LATENCY_BUCKETS_MAX + 1), dtype=np.int64)
    seen = np.zeros((2, n_users), dtype=bool)
    moved = [0, 0]
    share = start_share
    memory: LookMemory | None = None
    step = StepState(share=share, started_at=0.0)
    looks = np.arange(look_every_hours, last + 1e-9, look_every_hours)
    bounds = np.searchsorted(t, looks, side="right")
    lo = 0

    def arm(a: int) -> ArmSnapshot:
        n, e = req[a], err[a]
        units = UnitSums(
            units=int(seen[a].sum()), moved_in=moved[a],
            s1={"requests": float(n.sum()), "errors": float(e.sum())},
            s2={"requests": float(n @ n), "errors": float(e @ e)},
            cross={"errors|requests": float(e @ n)},
            nonzero={"requests": int(np.count_nonzero(n))},
        )  # fmt: skip
        filled = np.flatnonzero(hist[a])
        totals = ArmTotals(
            requests=int(n.sum()), errors=int(e.sum()),
            latency_histogram={int(k): int(hist[a][k]) for k in filled},
        )  # fmt: skip
        return ArmSnapshot(totals=totals, units=units)

    for hour, hi in zip(looks, bounds, strict=True):
        if hi > lo:
            u = user[lo:hi]
            side = (position[u] < share).astype(np.int64)
            idx = np.arange(lo, hi)
            for a in (0, 1):
                sel = side == a
                ua = u[sel]
                new = np.unique(ua[~seen[a][ua]])
                moved[a] += int(np.count_nonzero(seen[1 - a][new]))
                seen[a][new] = True
                np.add.at(req[a], ua, 1.0)
                np.add.at(err[a], ua, r["errors"][a][idx[sel]])
                hist[a] += np.bincount(r["bucket"][a][idx[sel]], minlength=hist.shape[1])
            lo = hi
        now = float(hour) * 3600
        c, tr = arm(0), arm(1)
        snap = ExperimentSnapshot(experiment="sim", route="sim", treatment_percent=share,
                                  taken_at=now, control=c, treatment=tr)  # fmt: skip
        d = decide(policy, snap, step, now, list(ramp_steps), looks=memory)
        memory = d.looks  # the look memory, as the controller keeps it
        if d.action == "advance":
            share = next(s for s in ramp_steps if s > share)
            step = StepState(
                share=share, started_at=now, control_units_at_start=c.units.units,
                treatment_units_at_start=tr.units.units, moved_in_at_start=tr.units.moved_in,
                control_moved_in_at_start=c.units.moved_in, index=step.index + 1,
            )  # fmt: skip
        elif d.action != "hold":
            return PolicyRun(d.action, float(hour), share, tr.totals.requests, tuple(d.reasons))
    return PolicyRun("hold", last, share, int(req[1].sum()), ())
