"""The reference study model of docs/statistics.md, simulated with numpy, and the tests run on it.

Users arrive uniformly over `days` (`users_per_day` a day), each in treatment with probability
`actual_share`; each makes 1 + Poisson(`extra_requests`) requests, the first at arrival and the
others uniform over the rest of the horizon. User i has a thumbs-up probability
p_i ~ Beta(c·m, c·(1 − m)) (c = `concentration`, m per arm), and each request is a thumbs-up
with probability p_i, so requests of one user are correlated. Optionally each request fails
with a per-arm error probability.

`simulate` returns, at every look, the unit-level sums per arm that the gateway keeps
(K, Σy, Σn, Σy², Σn², Σyn) for the chosen outcome, built incrementally request by request
exactly as the Lua scripts do. `decisions` applies the tests to those sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from analysis.metrics import compare
from analysis.policy import decide, srm_check
from analysis.stats.delta import ratio_from_sums_np
from analysis.stats.srm import log_bayes_factor, step_weight
from analysis.types import (
    ArmSnapshot,
    ExperimentSnapshot,
    LookMemory,
    PeriodSums,
    Policy,
    StepState,
    UnitSums,
)

Outcome = Literal["thumbs_up", "error"]
HOURS_PER_DAY = 24.0


@dataclass(frozen=True, slots=True)
class StudyModel:
    days: float = 14.0
    users_per_day: int = 2000
    share: float = 0.10  # configured
    actual_share: float | None = None  # what the (possibly broken) split really does
    extra_requests: float = 3.0
    m_control: float = 0.70
    m_treatment: float = 0.70
    concentration: float = 10.0
    error_control: float = 0.01
    error_treatment: float = 0.01


@dataclass(frozen=True, slots=True)
class LookSums:
    """Arrays of shape (looks, 2); column 0 control, 1 treatment."""

    hours: NDArray[Any]  # time of each look, hours since start
    k: NDArray[Any]
    sy: NDArray[Any]
    sn: NDArray[Any]
    syy: NDArray[Any]
    snn: NDArray[Any]
    syn: NDArray[Any]


def simulate(
    model: StudyModel,
    rng: np.random.Generator,
    *,
    outcome: Outcome = "thumbs_up",
    look_every_hours: float = 1.0,
    horizon_hours: float | None = None,
) -> LookSums:
    horizon = model.days * HOURS_PER_DAY
    last = horizon if horizon_hours is None else min(horizon, horizon_hours)
    n_users = round(model.days * model.users_per_day)
    day = np.repeat(np.arange(int(np.ceil(model.days))), model.users_per_day)[:n_users]
    arrival = (day + rng.random(n_users)) * HOURS_PER_DAY
    arrival = arrival[arrival < last]  # later users cannot affect the looks
    n_users = len(arrival)
    share = model.share if model.actual_share is None else model.actual_share
    arm = (rng.random(n_users) < share).astype(np.int64)
    m = np.where(arm == 1, model.m_treatment, model.m_control)
    p_user = rng.beta(model.concentration * m, model.concentration * (1 - m))
    n_req = 1 + rng.poisson(model.extra_requests, n_users)

    user = np.repeat(np.arange(n_users), n_req)
    starts = np.repeat(arrival, n_req)
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    t = np.where(first, starts, starts + rng.random(len(user)) * (horizon - starts))
    r_arm = arm[user]
    if outcome == "thumbs_up":
        x = (rng.random(len(user)) < p_user[user]).astype(np.float64)
    else:
        e = np.where(r_arm == 1, model.error_treatment, model.error_control)
        x = (rng.random(len(user)) < e).astype(np.float64)

    # within each user, in time order: the user's totals before this request
    order = np.argsort(user * (horizon + 1.0) + t)  # by user, then time
    user, t, x, r_arm = user[order], t[order], x[order], r_arm[order]
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
    cum_x = np.cumsum(x)
    y_before = cum_x - x - (cum_x[group_start] - x[group_start])
    n_before = np.arange(len(user)) - group_start

    # the increments each request makes to the unit-level sums (as router/signals/lua.py does)
    d_k = first.astype(np.float64)
    d_sy, d_sn = x, np.ones_like(x)
    d_syy = 2 * y_before * x + x * x
    d_snn = 2 * n_before + 1.0
    d_syn = y_before + x * n_before + x

    looks = np.arange(look_every_hours, last + 1e-9, look_every_hours)
    n_bins = len(looks)
    bins = np.floor(t / look_every_hours).astype(np.int64)  # first look that includes it
    keep = bins < n_bins
    cell = (bins * 2 + r_arm)[keep]

    def cumulative(w: NDArray[Any]) -> NDArray[Any]:
        counts = np.bincount(cell, weights=w[keep], minlength=2 * n_bins)
        return np.cumsum(counts.reshape(n_bins, 2), axis=0)

    return LookSums(
        hours=looks,
        k=cumulative(d_k),
        sy=cumulative(d_sy),
        sn=cumulative(d_sn),
        syy=cumulative(d_syy),
        snn=cumulative(d_snn),
        syn=cumulative(d_syn),
    )


@dataclass(frozen=True, slots=True)
class LookDecisions:
    """Per look (after the minimum units): which tests reject, and the estimates."""

    usable: NDArray[Any]  # bool: both arms have the minimum units and a variance
    diff: NDArray[Any]
    var: NDArray[Any]
    sequential: NDArray[Any]  # mSPRT at the unit level rejects H0 (running: ever so far)
    lower: NDArray[Any]  # running max of the confidence sequence's lower bound
    naive: NDArray[Any]  # fixed-horizon z-test with unit-level variance, at this look
    naive_request: NDArray[Any]  # fixed-horizon z-test with request-level variance, at this look
    request_level: NDArray[Any]  # mSPRT with the variance of independent requests (running)


def decisions(
    sums: LookSums, tau: float, alpha: float = 0.05, min_units: int = 20
) -> LookDecisions:
    r, var = ratio_from_sums_np(sums.k, sums.sy, sums.sn, sums.syy, sums.snn, sums.syn)
    diff = r[:, 1] - r[:, 0]
    v = var[:, 1] + var[:, 0]
    usable = (sums.k.min(axis=1) >= min_units) & np.isfinite(v) & (v > 0)
    v_safe = np.where(usable, v, 1.0)
    t2 = tau * tau
    llr = 0.5 * np.log(v_safe / (v_safe + t2)) + t2 * diff**2 / (2 * v_safe * (v_safe + t2))
    seq_now = usable & (llr >= np.log(1 / alpha))
    with np.errstate(invalid="ignore"):
        half = np.sqrt(v_safe * (v_safe + t2) / t2 * np.log((v_safe + t2) / (v_safe * alpha**2)))
    lower_now = np.where(usable, diff - half, -np.inf)
    z = diff / np.sqrt(v_safe)
    naive_now = usable & (np.abs(z) > 1.959963984540054)
    # independent requests: binomial variance per arm, n = requests
    with np.errstate(divide="ignore", invalid="ignore"):
        p = sums.sy / sums.sn
        v_req = (p * (1 - p) / sums.sn).sum(axis=1)
    ok_req = usable & np.isfinite(v_req) & (v_req > 0)
    v_req = np.where(ok_req, v_req, 1.0)
    llr_req = 0.5 * np.log(v_req / (v_req + t2)) + t2 * diff**2 / (2 * v_req * (v_req + t2))
    req_now = ok_req & (llr_req >= np.log(1 / alpha))
    naive_req_now = ok_req & (np.abs(diff / np.sqrt(v_req)) > 1.959963984540054)
    return LookDecisions(
        usable=usable,
        diff=np.where(usable, diff, 0.0),
        var=np.where(usable, v, 0.0),
        sequential=np.maximum.accumulate(seq_now),
        lower=np.maximum.accumulate(lower_now),
        naive=naive_now,
        naive_request=naive_req_now,
        request_level=np.maximum.accumulate(req_now),
    )


# -- the whole policy (analysis/policy.py `decide`) on a simulated population ---------------------


@dataclass(frozen=True, slots=True)
class PolicyModel:
    """A population for the full policy: users arrive uniformly (`users_per_day`), each with a
    hash position in [0, 100) so that a share increase moves some of them from control to
    treatment as the gateway does; 1 + Poisson(`extra_requests`) requests each, the first at
    arrival, the others uniform over the rest of `days`. A request is voted on with probability
    `vote_rate`, a thumbs-up with the user's per-arm probability Beta(c·m, c·(1 − m)) plus
    `drift` × (its time / `days`) (a change over time in both arms, e.g. +0.04: four points
    over the whole span), and fails with the arm's error probability."""

    days: float = 14.0
    users_per_day: int = 2000
    extra_requests: float = 3.0
    vote_rate: float = 0.5
    m_control: float = 0.70
    m_treatment: float = 0.70
    concentration: float = 10.0
    error_control: float = 0.01
    error_treatment: float = 0.01
    drift: float = 0.0


@dataclass(frozen=True, slots=True)
class PolicyRun:
    action: str  # the first final action (promote, rollback, pause), or "hold" at the horizon
    hours: float  # when it was taken (the horizon for "hold")
    share: float  # the share when it was taken
    treatment_requests: int
    reasons: tuple[str, ...]
    # the primary metric's fixed-horizon estimate at the look at `estimate_at_hours` (NaN: not
    # asked, or the run ended before)
    estimate: float = float("nan")
    estimate_se: float = float("nan")


SIM_FIELDS = ("requests", "votes", "fb:thumbs_up", "errors")
_PAIRS = (("errors", "requests"), ("fb:thumbs_up", "requests"), ("votes", "requests"),
          ("fb:thumbs_up", "votes"))  # fmt: skip
_DENOMINATORS = ("requests", "votes")


class RunningSums:
    """The sums over units of per-unit totals (`SIM_FIELDS`), kept as the Lua scripts keep
    them: each update changes them by the difference of the touched units' old and new totals,
    so a look costs O(units touched since the last one), not O(all units). The totals are
    integers, so the sums are exact and equal to a recomputation over every unit."""

    def __init__(self) -> None:
        self.units = 0
        self.s1 = dict.fromkeys(SIM_FIELDS, 0.0)
        self.s2 = dict.fromkeys(SIM_FIELDS, 0.0)
        self.cross = {f"{a}|{b}": 0.0 for a, b in _PAIRS}
        self.nonzero = dict.fromkeys(_DENOMINATORS, 0)

    def change(self, old: dict[str, NDArray[Any]], new: dict[str, NDArray[Any]]) -> None:
        """Totals of some distinct units went from `old` to `new` (arrays per field)."""
        for f in SIM_FIELDS:
            self.s1[f] += float(new[f].sum() - old[f].sum())
            self.s2[f] += float(new[f] @ new[f] - old[f] @ old[f])
        for a, b in _PAIRS:
            self.cross[f"{a}|{b}"] += float(new[a] @ new[b] - old[a] @ old[b])
        for d in _DENOMINATORS:
            self.nonzero[d] += int(np.count_nonzero(new[d]) - np.count_nonzero(old[d]))

    def snapshot(self, moved_in: int = 0) -> UnitSums:
        # built without validation (it is called at every look; the values are ours)
        return UnitSums.model_construct(
            units=self.units, moved_in=moved_in, s1=dict(self.s1), s2=dict(self.s2),
            cross=dict(self.cross), nonzero=dict(self.nonzero),
        )  # fmt: skip


def recomputed(totals: dict[str, NDArray[Any]], units: int, moved_in: int = 0) -> UnitSums:
    """The same sums computed over every unit at once (`totals`: per field, one entry per unit,
    zero for units not seen): the reference `RunningSums` is tested against."""
    return UnitSums(
        units=units, moved_in=moved_in,
        s1={f: float(totals[f].sum()) for f in SIM_FIELDS},
        s2={f: float(totals[f] @ totals[f]) for f in SIM_FIELDS},
        cross={f"{a}|{b}": float(totals[a] @ totals[b]) for a, b in _PAIRS},
        nonzero={d: int(np.count_nonzero(totals[d])) for d in _DENOMINATORS},
    )  # fmt: skip


class _Arm:
    """One arm's per-user totals, cumulative and of each user's current period, with the
    running sums over users, as router/signals/lua.py keeps them."""

    def __init__(self, n_users: int) -> None:
        self.acc = {f: np.zeros(n_users) for f in SIM_FIELDS}
        self.pacc = {f: np.zeros(n_users) for f in SIM_FIELDS}
        self.seen = np.zeros(n_users, dtype=bool)
        self.period_of = np.full(n_users, -1, dtype=np.int64)
        self.moved = 0
        self.sums = RunningSums()
        self.periods: dict[int, RunningSums] = {}

    def record(self, users: NDArray[Any], values: dict[str, NDArray[Any]], period: int) -> None:
        """Requests of `users` (one entry per request) in `period`, with their field values."""
        touched = np.unique(users)
        self.sums.units += int(np.count_nonzero(~self.seen[touched]))
        self.seen[touched] = True
        old = {f: self.acc[f][touched] for f in SIM_FIELDS}
        fresh = touched[self.period_of[touched] != period]
        for f in SIM_FIELDS:
            self.pacc[f][fresh] = 0.0
        self.period_of[fresh] = period
        sums = self.periods.setdefault(period, RunningSums())
        sums.units += len(fresh)
        pold = {f: self.pacc[f][touched] for f in SIM_FIELDS}
        for f in SIM_FIELDS:
            np.add.at(self.acc[f], users, values[f])
            np.add.at(self.pacc[f], users, values[f])
        self.sums.change(old, {f: self.acc[f][touched] for f in SIM_FIELDS})
        sums.change(pold, {f: self.pacc[f][touched] for f in SIM_FIELDS})


def request_times(
    rng: np.random.Generator, arrival: NDArray[Any], extra: float, total: float, last: float
) -> tuple[NDArray[Any], NDArray[Any]]:
    """The users' requests in time order, (user, hour): each user makes 1 + Poisson(`extra`),
    the first at its arrival, the others uniform over the rest of the `total` hours; those
    before `last` are kept."""
    n_req = 1 + rng.poisson(extra, len(arrival))
    user = np.repeat(np.arange(len(arrival)), n_req)
    starts = np.repeat(arrival, n_req)
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    t = np.where(first, starts, starts + rng.random(len(user)) * (total - starts))
    keep = t < last
    user, t = user[keep], t[keep]
    order = np.argsort(t)
    return user[order], t[order]


def simulate_policy(
    model: PolicyModel,
    policy: Policy,
    rng: np.random.Generator,
    *,
    start_share: float = 5.0,
    ramp_steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0),
    look_every_hours: float = 1.0,
    horizon_hours: float | None = None,
    by_period: bool = True,
    estimate_at_hours: float | None = None,
    check_sums: bool = False,
) -> PolicyRun:
    """Run the real `decide` at every look on the sums the gateway would hold, applying its
    advances (a new step and a new period, as the controller and the store keep them) until a
    final action or the horizon. `by_period=False` leaves the per-period sums out of the
    snapshots (the pooled estimate, for comparison); `check_sums` checks the running sums
    against a recomputation over every user at every look (slow; for tests)."""
    total = model.days * HOURS_PER_DAY
    last = total if horizon_hours is None else min(total, horizon_hours)
    n_users = round(last / HOURS_PER_DAY * model.users_per_day)
    arrival = rng.random(n_users) * last
    position = rng.random(n_users) * 100
    conc = model.concentration
    p_up = np.stack([
        rng.beta(conc * model.m_control, conc * (1 - model.m_control), n_users),
        rng.beta(conc * model.m_treatment, conc * (1 - model.m_treatment), n_users),
    ])  # fmt: skip
    user, t = request_times(rng, arrival, model.extra_requests, total, last)
    voted = (rng.random(len(user)) < model.vote_rate).astype(np.float64)
    draw = rng.random(len(user))
    shift = model.drift * t / total if model.drift else 0.0
    up = np.stack([(draw < p_up[a][user] + shift) * voted for a in (0, 1)]).astype(np.float64)
    edraw = rng.random(len(user))
    err = np.stack([
        (edraw < model.error_control).astype(np.float64),
        (edraw < model.error_treatment).astype(np.float64),
    ])  # fmt: skip

    arms = (_Arm(n_users), _Arm(n_users))
    share = start_share
    period = 0
    memory: LookMemory | None = None
    step = StepState(share=share, started_at=0.0)
    looks = np.arange(look_every_hours, last + 1e-9, look_every_hours)
    bounds = np.searchsorted(t, looks, side="right")
    lo = 0
    estimate = (float("nan"), float("nan"))
    closed: list[PeriodSums] = []

    for hour, hi in zip(looks, bounds, strict=True):
        if hi > lo:
            u = user[lo:hi]
            arm = (position[u] < share).astype(np.int64)
            for a in (0, 1):
                sel = arm == a
                ua = u[sel]
                new = np.unique(ua[~arms[a].seen[ua]])
                arms[a].moved += int(np.count_nonzero(arms[1 - a].seen[new]))
                idx = np.arange(lo, hi)[sel]
                values = {"requests": np.ones(len(ua)), "votes": voted[idx],
                          "fb:thumbs_up": up[a][idx], "errors": err[a][idx]}  # fmt: skip
                arms[a].record(ua, values, period)
            lo = hi
        now = float(hour) * 3600
        c, tr = (arms[a].sums.snapshot(arms[a].moved) for a in (0, 1))
        if check_sums:
            for a, got in ((0, c), (1, tr)):
                x = arms[a]
                assert got == recomputed(x.acc, int(x.seen.sum()), x.moved)
                # the current period's, exactly; together, every period's Σ y is the total's
                pt = {f: np.where(x.period_of == period, x.pacc[f], 0.0) for f in SIM_FIELDS}
                if period in x.periods:
                    assert x.periods[period].snapshot() == recomputed(
                        pt, int(np.count_nonzero(x.period_of == period))
                    )
                for f in SIM_FIELDS:
                    assert sum(ps.s1[f] for ps in x.periods.values()) == got.s1[f]
        # an ended period's sums are final (no event of it arrives later): kept from its end
        periods = [*closed, _period_sums(arms, period)] if by_period else []
        snap = ExperimentSnapshot(
            experiment="sim", route="sim", treatment_percent=share, taken_at=now,
            control=ArmSnapshot(units=c), treatment=ArmSnapshot(units=tr), period=period,
            periods=periods,
        )  # fmt: skip
        if estimate_at_hours is not None and abs(hour - estimate_at_hours) < 1e-9:
            estimate = _estimate(policy, snap)
        d = decide(policy, snap, step, now, list(ramp_steps), looks=memory)
        memory = d.looks  # the look memory, as the controller keeps it
        if d.action == "advance":
            share = next(s for s in ramp_steps if s > share)
            closed.append(_period_sums(arms, period))
            period += 1
            step = StepState(
                share=share, started_at=now, control_units_at_start=c.units,
                treatment_units_at_start=tr.units, moved_in_at_start=tr.moved_in,
                control_moved_in_at_start=c.moved_in, index=step.index + 1, period=period,
            )  # fmt: skip
        elif d.action != "hold":
            return PolicyRun(d.action, float(hour), share, int(tr.total("requests")),
                             tuple(d.reasons), *estimate)  # fmt: skip
    return PolicyRun("hold", last, share, int(arms[1].acc["requests"].sum()), (), *estimate)


def _period_sums(arms: tuple[_Arm, _Arm], period: int) -> PeriodSums:
    control, treatment = (a.periods.get(period, RunningSums()).snapshot() for a in arms)
    return PeriodSums(period=period, control=control, treatment=treatment)


def _estimate(policy: Policy, snap: ExperimentSnapshot) -> tuple[float, float]:
    """The primary metric's fixed-horizon difference and its standard error."""
    test = compare(snap, policy.primary_metric, sequential=False, alpha=policy.alpha,
                   min_units=policy.min_evidence_units).test  # fmt: skip
    if test.status != "ok" or test.difference is None or test.interval is None:
        return float("nan"), float("nan")
    q = float(stats.norm.ppf(1 - policy.alpha / 2))
    return test.difference, (test.interval.high - test.interval.low) / (2 * q)


# -- SRM through a ramp, checked every minute (analysis/policy.py `srm_check`) ---------------------


@dataclass(frozen=True, slots=True)
class SRMRun:
    paused: bool  # the always-valid test (the policy's) paused the experiment
    hours: float  # when (the horizon when not paused)
    share: float  # the share at the pause (or at the horizon)
    new_units: int  # new units in the step when it paused (or in the last step at the horizon)
    chi2_paused: bool  # the old rule (chi-square p < threshold, restarted each step) would have
    chi2_hours: float


def simulate_srm_ramp(
    policy: Policy,
    rng: np.random.Generator,
    *,
    users_per_day: float = 2000.0,
    days: float = 14.0,
    ramp_steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0),
    delivered: float = 1.0,
    look_every_minutes: float = 1.0,
) -> SRMRun:
    """A ramp through `ramp_steps` with the SRM check at every look, as the controller runs it.

    New users arrive as a Poisson process (`users_per_day`); each lands in treatment with
    probability `delivered` × the configured share (1.0: a correct split). A step lasts until
    the policy's minimums are met (`min_units_per_arm` new units per arm and
    `min_step_seconds`); the controller then advances and the next step starts at the next look
    (the units of the look in between belong to neither step, as in router/control/controller.py).
    The last step runs to the horizon. Only new units enter the counts: units that move between
    arms are subtracted exactly by `analysis.policy.new_units` (tested against the gateway's
    counting in tests/analysis/test_policy.py). At every look the policy's test (the same
    `log_bayes_factor` and step weight as `srm_check`, on arrays) decides a pause; for
    comparison, the old rule (a chi-square p < `srm_threshold`, each step afresh) is run on the
    same counts."""
    looks_total = int(days * 24 * 60 / look_every_minutes)
    rate = users_per_day / (24 * 60) * look_every_minutes
    look_s = look_every_minutes * 60
    start = 0  # index of the step's first look (its counts start after the previous look)
    chi2_at: float | None = None
    for index, share in enumerate(ramp_steps, start=1):
        n = looks_total - start
        if n <= 0:
            break
        arrivals = rng.poisson(rate, n)
        treat = rng.binomial(arrivals, min(1.0, delivered * share / 100))
        t = np.cumsum(treat)
        c = np.cumsum(arrivals - treat)
        gate = (c + t) >= policy.srm_min_units
        log_bf = log_bayes_factor(c, t, share / 100)
        limit = np.log(1 / (policy.srm_threshold * step_weight(index)))
        pause = gate & (log_bf >= limit)
        if chi2_at is None:
            total = np.maximum(c + t, 1)
            exp_t, exp_c = total * share / 100, total * (1 - share / 100)
            chi2 = (t - exp_t) ** 2 / exp_t + (c - exp_c) ** 2 / exp_c
            hit = np.flatnonzero(gate & (stats.chi2.sf(chi2, 1) < policy.srm_threshold))
            if len(hit):
                chi2_at = (start + hit[0] + 1) * look_s / 3600
        seconds = (np.arange(n) + 1) * look_s
        done = (np.minimum(c, t) >= policy.min_units_per_arm) & (seconds >= policy.min_step_seconds)
        last = index == len(ramp_steps)
        p_at = int(np.argmax(pause)) if pause.any() else n
        a_at = n if last or not done.any() else int(np.argmax(done))
        if p_at < n and p_at <= a_at:
            # the scalar policy function agrees with the array form at the pause
            check = srm_check(policy, int(c[p_at]), int(t[p_at]), share, index)
            assert check.mismatch, check
            return SRMRun(True, (start + p_at + 1) * look_s / 3600, share,
                          int(c[p_at] + t[p_at]), chi2_at is not None,
                          chi2_at if chi2_at is not None else days * 24)  # fmt: skip
        if last:
            return SRMRun(False, days * 24, share, int(c[-1] + t[-1]), chi2_at is not None,
                          chi2_at if chi2_at is not None else days * 24)  # fmt: skip
        start += a_at + 2  # the advance at look a_at; the next step starts at the next look
    return SRMRun(False, days * 24, ramp_steps[-1], 0, chi2_at is not None,
                  chi2_at if chi2_at is not None else days * 24)  # fmt: skip
