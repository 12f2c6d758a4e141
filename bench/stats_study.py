"""The simulation study: do the live statistics keep their promises on the reference model?

Reference model (docs/statistics.md; `analysis.simulate.StudyModel`): 14 days, 2,000 new users a
day, 10 % in treatment, 1 + Poisson(3) requests per user, per-user thumbs-up probability
Beta(10m, 10(1 − m)), a look every hour.

1. A/A: how often does each test ever declare a difference (target ≤ 5 % at α = 5 %)?
2. A planted drop of 70 % → 65 % at a 10 % share: power and median time to detection.
3. A planted 10x error rate (1 % → 10 %): median treatment requests until the error-rate
   guardrail (margin +1 point, looks every 5 minutes) declares a breach.
4. A broken split (8 % delivered, 10 % configured): how often SRM flags it within a day.

The whole policy (analysis/policy.py `decide`, run by `analysis.simulate.simulate_policy` on the
sums the gateway keeps, ramping 5 -> 10 -> 25 -> 50 % as the controller does; `--policy-reps`):

5. A harmful winner: thumbs-up 70 % -> 75 % but the error rate 1 % -> 2.5 % against a 1-point
   guardrail margin (hourly looks, 14 days): how often it is promoted (target <= alpha), and a
   harmless winner (error rate 1 % in both arms) for comparison.
6. Thin evidence: an A/A at a 5 % share with a look every 60 s over the first 12 hours, and
   an A/A through the whole ramp with hourly looks over 14 days: how often the policy acts;
   and that A/A with a thumbs-up rate drifting +4 points over the 14 days in both arms: how
   often it is promoted, and the bias of the difference at day 7 in standard errors, with the
   per-period estimates against the sums pooled over the ramp.
   `aa_minute` (its own `--aa-minute-reps`, slow: 20,160 looks per replication): the A/A from
   a 5 % share with a look every 60 s over the whole 14 days, as the controller looks by
   default: how often and when the policy acts (promotions, rollbacks, pauses).
7. The issue-16 example (60 control users, 2 treatment users with 5 thumbs-down) through
   `decide`.
8. SRM through correct ramps 5 -> 10 -> 25 -> 50 % (each step as long as the policy's minimums
   need), checked every 60 s for 14 days by the policy's always-valid test (`--srm-reps`): how
   often a correct split is paused (target <= 1 %), against the old chi-square rule; and the
   same ramps with treatment getting 90 % of its share: how often and how fast it is paused.
9. Guardrails from per-arm confidence sequences through `decide`
   (`analysis.simulate_guardrails`, `--policy-reps`): a 10x error rate (1 % -> 10 %) with a
   look every 60 s from a 5 % share, 2,000 users a day: treatment requests at the rollback
   (target: median <= 150), and the A/A false rollback rate over 48 h of such looks; the p95
   guardrail (margin 25 % relative, hourly looks, 14 days) on log-normal latencies (median
   800 ms, log-sd 0.6, 0.2 % timeouts at 30 s): a real +40 % regression, and a timeouts-only
   change (0.4 % timeouts, p95 +1 %) that must not be flagged (target <= alpha).

Run: ``python -m bench.stats_study [--reps 2000] [--policy-reps 200] [--srm-reps 1000]
[--aa-minute-reps 100] [--workers 2]``
(``make stats-study``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from analysis.policy import decide
from analysis.simulate import (
    PolicyModel,
    StudyModel,
    decisions,
    simulate,
    simulate_policy,
    simulate_srm_ramp,
)
from analysis.simulate_guardrails import GuardrailModel, simulate_guardrail_policy
from analysis.stats.srm import log_bayes_factor, step_weight
from analysis.types import (
    ArmSnapshot,
    ExperimentSnapshot,
    GuardrailSpec,
    Policy,
    StepState,
    UnitSums,
)

ALPHA = 0.05
TAU_THUMBS = 0.05
TAU_ERRORS = 0.01
ERROR_MARGIN = 0.01
SRM_THRESHOLD = 0.001
# the policy scenarios: the defaults (200 new units per arm and an hour per step, alpha 5 %,
# 20 units with data per arm before any test acts) with the error-rate guardrail alone
POLICY = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=ERROR_MARGIN)])
POLICY_SCENARIOS = ("harmful", "winner", "aa_fast", "aa_policy", "aa_drift")
# the A/A with a drift: thumbs-up +4 points over the 14 days in both arms, through the ramp
DRIFT = 0.04
# the A/A through the whole ramp with a look every 60 s for 14 days (`--aa-minute-reps`)
AA_MINUTE = "aa_minute"
# SRM through correct ramps 5 -> 10 -> 25 -> 50 %, checked every 60 s for 14 days (`--srm-reps`),
# and the same ramps with a broken split (treatment gets 90 % of its share: 45/55 at 50 %)
SRM_SCENARIOS = ("srm_ramp", "srm_ramp_broken")
# guardrails through `decide` (`--policy-reps`): the error-rate guardrail alone with a look every
# 60 s, and the p95 guardrail alone (margin 25 % relative) with hourly looks
GUARD_ERRORS = Policy(guardrails=[GuardrailSpec(metric="error_rate", margin=ERROR_MARGIN)])
GUARD_P95 = Policy(guardrails=[GuardrailSpec(metric="latency_p95_ms", margin=0.25, relative=True)])
GUARDRAIL_SCENARIOS = ("errors_cs", "errors_cs_aa", "p95_slower", "p95_timeouts")


def _srm_p(k: np.ndarray, share: float) -> np.ndarray:
    """The policy's always-valid SRM p-value (analysis/stats/srm.py) at each look, one step."""
    log_p = -(np.log(step_weight(1)) + log_bayes_factor(k[:, 0], k[:, 1], share))
    p = np.exp(np.minimum(log_p, 0.0))
    return np.where(k.sum(axis=1) >= POLICY.srm_min_units, p, 1.0)


def _scenario(args: tuple[str, int, int]) -> dict[str, list[float]]:
    name, seed, reps = args
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for _ in range(reps):
        if name == "aa":
            sums = simulate(StudyModel(), rng)
            d = decisions(sums, tau=TAU_THUMBS, alpha=ALPHA)
            put("sequential", float(d.sequential[-1]))
            put("naive_peeking", float(d.naive.any()))
            put("final_unit_z", float(d.naive[-1]))
            put("final_request_z", float(d.naive_request[-1]))
            put("request_sequential", float(d.request_level[-1]))
            put("srm_any_look", float((_srm_p(sums.k, 0.10) < SRM_THRESHOLD).any()))
        elif name == "drop":
            sums = simulate(StudyModel(m_treatment=0.65), rng)
            d = decisions(sums, tau=TAU_THUMBS, alpha=ALPHA)
            hit = np.flatnonzero(d.sequential)
            put("detected", float(len(hit) > 0))
            put("hours", float(sums.hours[hit[0]]) if len(hit) else np.nan)
            put("naive_final", float(d.naive[-1]))
        elif name == "errors":
            model = StudyModel(error_control=0.01, error_treatment=0.10)
            sums = simulate(model, rng, outcome="error", look_every_hours=1 / 12,
                            horizon_hours=48)  # fmt: skip
            d = decisions(sums, tau=TAU_ERRORS, alpha=ALPHA, min_units=5)
            breach = np.flatnonzero(d.lower > ERROR_MARGIN)
            put("detected", float(len(breach) > 0))
            put("requests", float(sums.sn[breach[0], 1]) if len(breach) else np.nan)
            put("hours", float(sums.hours[breach[0]]) if len(breach) else np.nan)
        elif name == "aa_drift":
            # the same population through the policy twice: per-period estimates (abgate) and
            # the sums pooled over the ramp (the estimate before periods, for comparison)
            seed_ = int(rng.integers(2**63))
            for suffix, by_period in (("", True), ("_pooled", False)):
                run_ = simulate_policy(PolicyModel(drift=DRIFT), POLICY,
                                       np.random.default_rng(seed_), by_period=by_period,
                                       estimate_at_hours=7 * 24)  # fmt: skip
                put("promote" + suffix, float(run_.action == "promote"))
                put("any" + suffix, float(run_.action != "hold"))
                put("z7" + suffix, run_.estimate / run_.estimate_se)
        elif name in (*POLICY_SCENARIOS, AA_MINUTE):
            if name == AA_MINUTE:
                run_ = simulate_policy(PolicyModel(), POLICY, rng, look_every_hours=1 / 60)
            elif name == "aa_fast":
                run_ = simulate_policy(PolicyModel(), POLICY, rng, look_every_hours=1 / 60,
                                       horizon_hours=12)  # fmt: skip
            elif name == "aa_policy":
                run_ = simulate_policy(PolicyModel(), POLICY, rng)
            else:
                errors = 0.025 if name == "harmful" else 0.01
                model = PolicyModel(m_treatment=0.75, error_treatment=errors)
                run_ = simulate_policy(model, POLICY, rng)
            for action in ("promote", "rollback", "pause", "hold"):
                put(action, float(run_.action == action))
            put("hours", run_.hours if run_.action != "hold" else np.nan)
            put("treatment_requests", float(run_.treatment_requests))
        elif name in GUARDRAIL_SCENARIOS:
            if name.startswith("errors"):
                errors = 0.10 if name == "errors_cs" else 0.01
                grun = simulate_guardrail_policy(GuardrailModel(error_treatment=errors),
                                                 GUARD_ERRORS, rng, horizon_hours=48)  # fmt: skip
            else:
                slower = name == "p95_slower"
                model = GuardrailModel(days=14, latency_scale_treatment=1.4 if slower else 1.0,
                                       timeout_treatment=0.002 if slower else 0.004)  # fmt: skip
                grun = simulate_guardrail_policy(model, GUARD_P95, rng, look_every_hours=1.0)
            rolled = grun.action == "rollback"
            put("rollback", float(rolled))
            put("pause", float(grun.action == "pause"))
            put("requests", float(grun.treatment_requests) if rolled else np.nan)
            put("hours", grun.hours if rolled else np.nan)
        elif name in SRM_SCENARIOS:
            delivered = 1.0 if name == "srm_ramp" else 0.9
            srun = simulate_srm_ramp(POLICY, rng, delivered=delivered)
            put("pause", float(srun.paused))
            put("hours", srun.hours if srun.paused else np.nan)
            put("share", srun.share if srun.paused else np.nan)
            put("units", float(srun.new_units) if srun.paused else np.nan)
            put("chi2_pause", float(srun.chi2_paused))
        elif name == "srm":
            sums = simulate(StudyModel(actual_share=0.08), rng, horizon_hours=24 * 7)
            p = _srm_p(sums.k, 0.10)
            put("day1", float((p[:24] < SRM_THRESHOLD).any()))
            put("week1", float((p < SRM_THRESHOLD).any()))
            hit = np.flatnonzero(p < SRM_THRESHOLD)
            put("hours", float(sums.hours[hit[0]]) if len(hit) else np.nan)
    return out


def run(
    reps: int,
    workers: int,
    seed: int = 20261128,
    policy_reps: int = 200,
    names: tuple[str, ...] = (
        "aa",
        "drop",
        "errors",
        "srm",
        *POLICY_SCENARIOS,
        *SRM_SCENARIOS,
        *GUARDRAIL_SCENARIOS,
    ),
    srm_reps: int = 1000,
    aa_minute_reps: int = 100,
) -> dict[str, dict[str, Any]]:
    jobs: list[tuple[str, int, int]] = []
    every = ("aa", "drop", "errors", "srm", *POLICY_SCENARIOS, *SRM_SCENARIOS,
             *GUARDRAIL_SCENARIOS, AA_MINUTE)  # fmt: skip
    for i, name in enumerate(every):
        if name not in names:
            continue
        total = policy_reps if name in (*POLICY_SCENARIOS, *GUARDRAIL_SCENARIOS) else reps
        if name in SRM_SCENARIOS:
            total = srm_reps if name == "srm_ramp" else max(1, srm_reps // 5)
        if name == AA_MINUTE:
            total = aa_minute_reps
        chunk = max(1, total // (workers * 4))
        done = 0
        while done < total:
            n = min(chunk, total - done)
            jobs.append((name, seed + 100_000 * i + done, n))
            done += n
    results: dict[str, dict[str, list[float]]] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (name, _, _), part in zip(jobs, pool.map(_scenario, jobs), strict=True):
            for key, values in part.items():
                results.setdefault(name, {}).setdefault(key, []).extend(values)
    return {n: {k: np.array(v) for k, v in r.items()} for n, r in results.items()}


def two_users() -> dict[str, str]:
    """The issue-16 example through `decide`: 60 control users (thumbs-up about 60 %, every
    request voted) and 2 treatment users with 5 thumbs-down between them, at the 5 % step."""
    rng = np.random.default_rng(16)
    n = (1 + rng.poisson(3, 60)).astype(float)
    up = rng.binomial(n.astype(int), 0.6).astype(float)
    two = np.array([3.0, 2.0])

    def arm(req: np.ndarray, ups: np.ndarray) -> ArmSnapshot:
        return ArmSnapshot(units=UnitSums(
            units=len(req),
            s1={"requests": req.sum(), "votes": req.sum(), "fb:thumbs_up": ups.sum()},
            s2={"requests": req @ req, "votes": req @ req, "fb:thumbs_up": ups @ ups},
            cross={"fb:thumbs_up|votes": ups @ req, "fb:thumbs_up|requests": ups @ req,
                   "votes|requests": req @ req},
            nonzero={"requests": len(req), "votes": len(req)},
        ))  # fmt: skip

    snap = ExperimentSnapshot(experiment="two", route="r", treatment_percent=5, taken_at=3600,
                              control=arm(n, up), treatment=arm(two, np.zeros(2)))  # fmt: skip
    out: dict[str, str] = {}
    for key, pol in (("", POLICY), ("floor_", POLICY.model_copy(update={"min_evidence_units": 2}))):
        d = decide(pol, snap, StepState(share=5, started_at=0), 3600, [5, 10, 25, 50, 100])
        test = d.primary.test if d.primary is not None else None
        out[key + "action"] = d.action
        out[key + "reason"] = (
            ""
            if test is None
            else test.reason or f"p = {test.p_value:.3g}, difference {test.difference:+.3f}"
        )
    return out


def wilson(x: np.ndarray) -> tuple[float, float, float]:
    """The proportion of a 0/1 array with its 95 % Wilson interval (it stays inside [0, 1] and
    is not empty at 0 of n)."""
    n, p, z = len(x), float(np.mean(x)), 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _ci(x: np.ndarray) -> str:
    _, lo, hi = wilson(x)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _pct(x: np.ndarray) -> str:
    return f"{100 * float(np.mean(x)):.1f} %"


def _median(x: np.ndarray) -> str:
    """The median of the finite values (none: "-", an A/A may never act)."""
    finite = x[np.isfinite(x)]
    return f"{np.median(finite):.0f}" if len(finite) else "-"


def _mean_ci(x: np.ndarray) -> str:
    """± the 95 % normal half-width of the mean of the finite values."""
    v = x[np.isfinite(x)]
    return f"± {1.96 * float(np.std(v)) / np.sqrt(max(len(v), 1)):.2f}"


def _se(x: np.ndarray) -> str:
    p = float(np.mean(x))
    return f"± {100 * 1.96 * np.sqrt(p * (1 - p) / len(x)):.1f}"


SCENARIOS = ("aa", "drop", "errors", "srm", *POLICY_SCENARIOS, AA_MINUTE, *SRM_SCENARIOS,
             *GUARDRAIL_SCENARIOS, "two_users")  # fmt: skip
Row = tuple[str, str, str]


def _rows(name: str, x: dict[str, Any]) -> list[Row]:
    if name == "aa":
        return [
            ("1. A/A, ever declares a difference over 14 days (target <= 5 %)", "", ""),
            ("   mSPRT, unit-level variance (abgate)", _pct(x["sequential"]),
             _se(x["sequential"])),
            ("   z-test at every hourly look (naive peeking)", _pct(x["naive_peeking"]),
             _se(x["naive_peeking"])),
            ("   z-test once at day 14, unit-level variance", _pct(x["final_unit_z"]),
             _se(x["final_unit_z"])),
            ("   z-test once at day 14, request-level (ignores clustering)",
             _pct(x["final_request_z"]), _se(x["final_request_z"])),
            ("   mSPRT with request-level variance (ignores clustering)",
             _pct(x["request_sequential"]), _se(x["request_sequential"])),
            ("   SRM (always-valid) false alarm at any hourly look (correct split)",
             _pct(x["srm_any_look"]), _ci(x["srm_any_look"])),
        ]  # fmt: skip
    if name == "drop":
        return [
            ("2. Drop 70 % -> 65 % at 10 % share", "", ""),
            ("   power of the mSPRT within 14 days", _pct(x["detected"]), _se(x["detected"])),
            ("   median time to detection (days)", f"{np.nanmedian(x['hours']) / 24:.1f}", ""),
            ("   fixed-horizon z-test power at day 14 (reference)", _pct(x["naive_final"]), ""),
        ]
    if name == "errors":
        return [
            ("3. Error rate 1 % -> 10 %, margin +1 point, 5-minute looks: the normal-approximation "
             "mSPRT (before the per-arm sequences; see 9)", "", ""),
            ("   breach declared within 48 h", _pct(x["detected"]), ""),
            ("   median treatment requests until breach", f"{np.nanmedian(x['requests']):.0f}",
             ""),
            ("   median time until breach (hours)", f"{np.nanmedian(x['hours']):.2f}", ""),
        ]  # fmt: skip
    if name == "srm":
        return [
            (
                "4. Broken split: 8 % delivered, 10 % configured (always-valid SRM, p < 0.001)",
                "",
                "",
            ),
            ("   flagged within a day", _pct(x["day1"]), _se(x["day1"])),
            ("   flagged within a week", _pct(x["week1"]), _se(x["week1"])),
            ("   median time to flag (hours)", f"{np.nanmedian(x['hours']):.0f}", ""),
        ]
    if name == "harmful":
        return [
            ("5. Whole policy: thumbs-up 70 % -> 75 %, errors 1 % -> 2.5 %, margin 1 pt", "", ""),
            ("   promoted (target <= 5 %)", _pct(x["promote"]), _ci(x["promote"])),
            ("   rolled back (error-rate guardrail)", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   paused (SRM)", _pct(x["pause"]), _ci(x["pause"])),
            ("   still holding after 14 days", _pct(x["hold"]), _ci(x["hold"])),
            ("   median hours to the action", f"{np.nanmedian(x['hours']):.0f}", ""),
        ]
    if name == "winner":
        return [
            ("   the same winner, error rate 1 % in both arms: promoted", _pct(x["promote"]),
             _ci(x["promote"])),
            ("   ... rolled back", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   ... paused (SRM)", _pct(x["pause"]), _ci(x["pause"])),
            ("   ... median hours to the action", f"{np.nanmedian(x['hours']):.0f}", ""),
        ]  # fmt: skip
    if name == "aa_fast":
        any_ = np.maximum.reduce([x["promote"], x["rollback"], x["pause"]])
        return [
            ("6. A/A, 5 % share, a look every 60 s, first 12 h: any action", _pct(any_),
             _ci(any_)),
            ("   ... rollbacks", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   ... pauses (SRM)", _pct(x["pause"]), _ci(x["pause"])),
        ]  # fmt: skip
    if name == "aa_policy":
        return [
            ("6b. A/A, whole ramp from 5 %, hourly looks, 14 days: promoted", _pct(x["promote"]),
             _ci(x["promote"])),
            ("   ... rolled back", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   ... paused (SRM)", _pct(x["pause"]), _ci(x["pause"])),
        ]  # fmt: skip
    if name == AA_MINUTE:
        any_ = np.maximum.reduce([x["promote"], x["rollback"], x["pause"]])
        return [
            ("6d. A/A, whole ramp from 5 %, a look every 60 s, 14 days: any action", _pct(any_),
             _ci(any_)),
            ("   ... rolled back", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   ... promoted", _pct(x["promote"]), _ci(x["promote"])),
            ("   ... paused (SRM)", _pct(x["pause"]), _ci(x["pause"])),
            ("   ... median hour of the actions", _median(x["hours"]), ""),
        ]  # fmt: skip
    if name == "aa_drift":
        return [
            ("6c. A/A, thumbs-up drifting +4 points over 14 days in both arms, ramp from 5 %, "
             "hourly looks: promoted (baseline: 6b, no drift)", _pct(x["promote"]),
             _ci(x["promote"])),
            ("   ... any action (promote, rollback, pause)", _pct(x["any"]), _ci(x["any"])),
            ("   ... difference at day 7 in standard errors, mean (target 0)",
             f"{np.nanmean(x['z7']):+.2f}", _mean_ci(x["z7"])),
            ("   ... its standard deviation (1 when the variance is right)",
             f"{np.nanstd(x['z7']):.2f}", ""),
            ("   the same with the sums pooled over the ramp: promoted",
             _pct(x["promote_pooled"]), _ci(x["promote_pooled"])),
            ("   ... difference at day 7 in standard errors, mean",
             f"{np.nanmean(x['z7_pooled']):+.2f}", _mean_ci(x["z7_pooled"])),
            ("   ... its standard deviation", f"{np.nanstd(x['z7_pooled']):.2f}", ""),
        ]  # fmt: skip
    if name == "srm_ramp":
        return [
            ("8. Correct ramps 5 -> 10 -> 25 -> 50 %, SRM every 60 s, 14 days: paused",
             _pct(x["pause"]), _ci(x["pause"])),
            ("   ... the old rule (chi-square p < 0.001, each step afresh) would pause",
             _pct(x["chi2_pause"]), _ci(x["chi2_pause"])),
        ]  # fmt: skip
    if name == "srm_ramp_broken":
        return [
            ("   the same ramps, treatment gets 90 % of its share (45/55 at 50 %): paused",
             _pct(x["pause"]), _ci(x["pause"])),
            ("   ... median hours to the pause", f"{np.nanmedian(x['hours']):.0f}", ""),
            ("   ... median new units in the step at the pause",
             f"{np.nanmedian(x['units']):.0f}", ""),
            ("   ... paused at 50 % (share of the pauses)",
             _pct(x["share"][np.isfinite(x["share"])] == 50.0), ""),
        ]  # fmt: skip
    if name in GUARDRAIL_SCENARIOS:
        return _guardrail_rows(name, x)
    action, reason = x["action"], x["reason"]
    return [
        ("7. 60 control users, 2 treatment users with 5 thumbs-down (issue 16)", "", ""),
        ("   decide(), default minimum evidence (20 voting units per arm)", action, ""),
        ("   primary metric", "", reason),
        ("   with min_evidence_units = 2 (variance floor alone)", x["floor_action"],
         x["floor_reason"]),
    ]  # fmt: skip


def _quartiles(x: np.ndarray) -> str:
    v = x[np.isfinite(x)]
    if not len(v):
        return "-"
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return f"{q2:.0f} [{q1:.0f}, {q3:.0f}]"


def _guardrail_rows(name: str, x: dict[str, Any]) -> list[Row]:
    if name == "errors_cs":
        return [
            ("9. Error rate 1 % -> 10 %, per-arm sequences, decide() every 60 s from 5 %", "", ""),
            ("   rolled back within 48 h", _pct(x["rollback"]), _ci(x["rollback"])),
            ("   treatment requests at the rollback: median [quartiles] (target <= 150)",
             _quartiles(x["requests"]), ""),
            ("   hours to the rollback: median [quartiles]", _quartiles(x["hours"]), ""),
        ]  # fmt: skip
    if name == "errors_cs_aa":
        return [
            ("   A/A error rate 1 %, the same looks for 48 h: rolled back (target <= 5 %)",
             _pct(x["rollback"]), _ci(x["rollback"])),
        ]  # fmt: skip
    if name == "p95_slower":
        return [
            ("   p95 guardrail (25 % relative), latencies x 1.4, hourly, 14 days: rolled back",
             _pct(x["rollback"]), _ci(x["rollback"])),
            ("   ... treatment requests at the rollback: median [quartiles]",
             _quartiles(x["requests"]), ""),
            ("   ... hours to the rollback: median [quartiles]", _quartiles(x["hours"]), ""),
        ]  # fmt: skip
    return [
        ("   timeouts only (0.2 % -> 0.4 %, p95 +1 %): rolled back (target <= 5 %)",
         _pct(x["rollback"]), _ci(x["rollback"])),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulation study of the live statistics")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--policy-reps", type=int, default=200,
                        help="replications of the whole-policy scenarios (slower)")  # fmt: skip
    parser.add_argument(
        "--srm-reps",
        type=int,
        default=1000,
        help="replications of the SRM ramp scenario (its broken variant: a fifth)",
    )
    parser.add_argument(
        "--aa-minute-reps",
        type=int,
        default=100,
        help="replications of the A/A with a look every 60 s for 14 days (slow)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all; {AA_MINUTE} "
        "takes about 20 CPU-seconds per replication)",
    )
    args = parser.parse_args(argv)
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    t0 = time.monotonic()
    r: dict[str, dict[str, Any]] = run(
        args.reps, args.workers, policy_reps=args.policy_reps, srm_reps=args.srm_reps,
        aa_minute_reps=args.aa_minute_reps, names=tuple(s for s in chosen if s != "two_users"),
    )  # fmt: skip
    if "two_users" in chosen:
        r["two_users"] = two_users()
    rows = [row for name in SCENARIOS if name in r for row in _rows(name, r[name])]
    print(f"\nsimulation study, {args.reps} replications per scenario, {args.policy_reps} per "
          f"whole-policy scenario, {args.srm_reps} of the SRM ramp, "
          f"{args.aa_minute_reps} of the A/A with 60-second looks "
          f"({time.monotonic() - t0:.0f} s, {args.workers} workers); "
          "95 % Monte Carlo intervals: ± (normal) or [Wilson]\n")  # fmt: skip
    width = max(len(row[0]) for row in rows)
    for label, value, ci in rows:
        print(f"{label.ljust(width)}  {value:>8} {ci}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
