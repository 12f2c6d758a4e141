"""The simulation study: do the live statistics keep their promises on the reference model?

Reference model (docs/statistics.md; `analysis.simulate.StudyModel`): 14 days, 2,000 new users a
day, 10 % in treatment, 1 + Poisson(3) requests per user, per-user thumbs-up probability
Beta(10m, 10(1 − m)), a look every hour.

1. A/A: how often does each test ever declare a difference (target ≤ 5 % at α = 5 %)?
2. A planted drop of 70 % → 65 % at a 10 % share: power and median time to detection.
3. A planted 10x error rate (1 % → 10 %): median treatment requests until the error-rate
   guardrail (margin +1 point, looks every 5 minutes) declares a breach.
4. A broken split (8 % delivered, 10 % configured): how often SRM flags it within a day.

Run: ``python -m bench.stats_study [--reps 2000] [--workers 2]`` (``make stats-study``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy import stats

from analysis.simulate import StudyModel, decisions, simulate

ALPHA = 0.05
TAU_THUMBS = 0.05
TAU_ERRORS = 0.01
ERROR_MARGIN = 0.01
SRM_THRESHOLD = 0.001


def _srm_p(k: np.ndarray, share: float) -> np.ndarray:
    total = k.sum(axis=1)
    exp_t, exp_c = total * share, total * (1 - share)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = (k[:, 1] - exp_t) ** 2 / exp_t + (k[:, 0] - exp_c) ** 2 / exp_c
    p = stats.chi2.sf(chi2, 1)
    return np.where((exp_t >= 5) & (exp_c >= 5), p, 1.0)


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
        elif name == "srm":
            sums = simulate(StudyModel(actual_share=0.08), rng, horizon_hours=24 * 7)
            p = _srm_p(sums.k, 0.10)
            put("day1", float((p[:24] < SRM_THRESHOLD).any()))
            put("week1", float((p < SRM_THRESHOLD).any()))
            hit = np.flatnonzero(p < SRM_THRESHOLD)
            put("hours", float(sums.hours[hit[0]]) if len(hit) else np.nan)
    return out


def run(reps: int, workers: int, seed: int = 20261128) -> dict[str, dict[str, Any]]:
    jobs: list[tuple[str, int, int]] = []
    chunk = max(1, reps // (workers * 4))
    for i, name in enumerate(("aa", "drop", "errors", "srm")):
        done = 0
        while done < reps:
            n = min(chunk, reps - done)
            jobs.append((name, seed + 1000 * i + done, n))
            done += n
    results: dict[str, dict[str, list[float]]] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (name, _, _), part in zip(jobs, pool.map(_scenario, jobs), strict=True):
            for key, values in part.items():
                results.setdefault(name, {}).setdefault(key, []).extend(values)
    return {n: {k: np.array(v) for k, v in r.items()} for n, r in results.items()}


def _pct(x: np.ndarray) -> str:
    return f"{100 * float(np.mean(x)):.1f} %"


def _se(x: np.ndarray) -> str:
    p = float(np.mean(x))
    return f"± {100 * 1.96 * np.sqrt(p * (1 - p) / len(x)):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulation study of the live statistics")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    r = run(args.reps, args.workers)
    aa, drop, err, srm = r["aa"], r["drop"], r["errors"], r["srm"]
    rows = [
        ("1. A/A, ever declares a difference over 14 days (target <= 5 %)", "", ""),
        ("   mSPRT, unit-level variance (abgate)", _pct(aa["sequential"]), _se(aa["sequential"])),
        ("   z-test at every hourly look (naive peeking)", _pct(aa["naive_peeking"]),
         _se(aa["naive_peeking"])),
        ("   z-test once at day 14, unit-level variance", _pct(aa["final_unit_z"]),
         _se(aa["final_unit_z"])),
        ("   z-test once at day 14, request-level (ignores clustering)",
         _pct(aa["final_request_z"]), _se(aa["final_request_z"])),
        ("   mSPRT with request-level variance (ignores clustering)",
         _pct(aa["request_sequential"]), _se(aa["request_sequential"])),
        ("   SRM false alarm at any hourly look (correct split)", _pct(aa["srm_any_look"]),
         _se(aa["srm_any_look"])),
        ("2. Drop 70 % -> 65 % at 10 % share", "", ""),
        ("   power of the mSPRT within 14 days", _pct(drop["detected"]), _se(drop["detected"])),
        ("   median time to detection (days)",
         f"{np.nanmedian(drop['hours']) / 24:.1f}", ""),
        ("   fixed-horizon z-test power at day 14 (reference)", _pct(drop["naive_final"]), ""),
        ("3. Error rate 1 % -> 10 %, guardrail margin +1 point, 5-minute looks", "", ""),
        ("   breach declared within 48 h", _pct(err["detected"]), ""),
        ("   median treatment requests until breach", f"{np.nanmedian(err['requests']):.0f}", ""),
        ("   median time until breach (hours)", f"{np.nanmedian(err['hours']):.2f}", ""),
        ("4. Broken split: 8 % delivered, 10 % configured (SRM p < 0.001)", "", ""),
        ("   flagged within a day", _pct(srm["day1"]), _se(srm["day1"])),
        ("   flagged within a week", _pct(srm["week1"]), _se(srm["week1"])),
        ("   median time to flag (hours)", f"{np.nanmedian(srm['hours']):.0f}", ""),
    ]  # fmt: skip
    print(f"\nsimulation study, {args.reps} replications per scenario "
          f"({time.monotonic() - t0:.0f} s, {args.workers} workers)\n")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for label, value, ci in rows:
        print(f"{label.ljust(width)}  {value:>8} {ci}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
