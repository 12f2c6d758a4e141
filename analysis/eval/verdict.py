"""Per-suite verdicts and the gate.

`judge_suite` compares the two models' grades on the same cases. Deltas are candidate − base
in percentage points of pass rate (pass/fail graders) or of mean score × 100 (score graders).
The interval is the paired percentile bootstrap at confidence 1 − α; the p-value is the exact
McNemar test (pass/fail) or the bootstrap's dual p-value (score). See `analysis.eval.paired`.

Verdict rules, first match wins, with the suite's thresholds (all in points):

0. **incomplete**: more than ``max_failed_fraction`` (2 %) of the cases have a failed model
   call (either model): the comparison cannot be trusted;
1. **forgetting**: delta ≤ −``forgetting_points`` (5) and p < ``alpha`` (0.05): a proven,
   material drop;
2. **win**: the interval's lower bound > ``win_margin`` (0) and p < α: a proven gain beyond
   the margin (both, so that a percentile interval on few discordant pairs cannot claim a win
   the exact test does not support);
3. **watch**: delta < −``watch_points`` (1), or delta < 0 with p < α: a drop too large to
   ignore that is not (yet) proven material, or a proven drop smaller than the forgetting
   line;
4. otherwise **acceptable** (regression suites) or, for target suites that did not win,
   **inconclusive** (delta > 0) or **no improvement** (delta ≤ 0).

With n = 100, "99 % → 97 %" (delta −2, two discordant cases, p = 0.5) is *watch* and
"74 % → 73 %" (delta −1) is *acceptable*; "88 % → 71 %" on 100 cases is *forgetting*.
Comparisons allow 1e-9 points of rounding, so −1.0000000000000009 is not below −1.

A failed model call (a ``None`` grade, or a `CaseOutput` with ``error``) removes its case from
the comparison for *both* models (a failure on one side must not count for or against
either), the statistics use the complete pairs (``n``), and the warning says how many failed.

`gate` fails when any target suite is not a win, any suite is forgetting or incomplete,
contamination exceeds the spec's limit, or the cases do not match the pinned fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analysis.eval.paired import (
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap_test,
    small_n_warning,
)
from analysis.eval.spec import Thresholds
from analysis.eval.types import CaseOutput, EvalInputError, Grade, GraderKind

__all__ = [
    "CaseRow",
    "GateResult",
    "Role",
    "SuiteResult",
    "Verdict",
    "classify",
    "gate",
    "judge_suite",
]

Role = Literal["target", "regression"]
Verdict = Literal[
    "win", "forgetting", "watch", "acceptable", "inconclusive", "no improvement", "incomplete"
]
_EPS = 1e-9
POWER = 0.8


class CaseRow(BaseModel):
    """One case of a suite: both models' grades (and outputs, when the caller gave them)."""

    model_config = ConfigDict(frozen=True)

    case_id: str
    base: Grade
    candidate: Grade
    base_output: str = ""
    candidate_output: str = ""
    base_error: str | None = None
    candidate_error: str | None = None


class SuiteResult(BaseModel):
    """A suite's comparison. Rates are fractions; delta, interval and MDE are in points."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    role: Role
    kind: GraderKind
    n: int  # complete pairs: cases where neither model's call failed
    n_cases: int = 0  # cases in the suite
    base_rate: float
    candidate_rate: float
    delta_points: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: Literal["mcnemar exact", "paired bootstrap"]
    discordant: tuple[int, int] | None = None  # (base only passed, candidate only passed)
    mde_points: float
    small_n: bool
    base_errors: int = 0
    candidate_errors: int = 0
    warning: str | None = None
    verdict: Verdict
    thresholds: Thresholds = Field(default_factory=Thresholds)
    rows: list[CaseRow]


class GateResult(BaseModel):
    """``passed`` and, when it failed, ``reasons``; ``notes`` are what to look at anyway."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    notes: list[str] = Field(default_factory=list)


def classify(
    role: Role, delta_points: float, ci_low: float, p_value: float, thresholds: Thresholds
) -> Verdict:
    """The verdict rules of the module docstring."""
    significant = p_value < thresholds.alpha
    if delta_points <= -thresholds.forgetting_points + _EPS and significant:
        return "forgetting"
    if ci_low > thresholds.win_margin + _EPS and significant:
        return "win"
    if delta_points < -thresholds.watch_points - _EPS or (delta_points < -_EPS and significant):
        return "watch"
    if role == "target":
        return "inconclusive" if delta_points > _EPS else "no improvement"
    return "acceptable"


def _effective(
    grades: Sequence[Grade | None], outputs: Sequence[CaseOutput] | None, who: str
) -> tuple[list[Grade], list[str | None]]:
    effective: list[Grade] = []
    errors: list[str | None] = []
    for i, grade in enumerate(grades):
        error = outputs[i].error if outputs is not None else None
        if grade is None and error is None:
            error = "no output"
        if error is not None:
            effective.append(Grade(passed=False, score=0.0, detail=f"{who} call failed: {error}"))
        else:
            assert grade is not None
            effective.append(grade)
        errors.append(error)
    return effective, errors


def judge_suite(
    name: str,
    role: Role,
    thresholds: Thresholds,
    kind: GraderKind,
    base_grades: Sequence[Grade | None],
    cand_grades: Sequence[Grade | None],
    *,
    case_ids: Sequence[str] | None = None,
    base_outputs: Sequence[CaseOutput] | None = None,
    cand_outputs: Sequence[CaseOutput] | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> SuiteResult:
    """Compare the grades of the same cases, in the same order, for both models.

    ``None`` grades and outputs with ``error`` are failed model calls (see module).
    ``case_ids`` (or the outputs' ``case_id``) name the rows; outputs also give the rows
    their text for the report's failure examples.
    """
    n_cases = len(base_grades)
    lengths = {len(cand_grades), n_cases}
    for extra in (case_ids, base_outputs, cand_outputs):
        if extra is not None:
            lengths.add(len(extra))
    if len(lengths) != 1:
        raise ValueError(f"suite {name!r}: grades, outputs and ids differ in length")
    if n_cases == 0:
        raise EvalInputError(f"suite {name!r}: no cases to compare", source=name)
    base, base_err = _effective(base_grades, base_outputs, "base")
    cand, cand_err = _effective(cand_grades, cand_outputs, "candidate")
    if case_ids is not None:
        ids = list(case_ids)
    elif base_outputs is not None:
        ids = [o.case_id for o in base_outputs]
    else:
        ids = [str(i + 1) for i in range(n_cases)]

    n_base_err = sum(e is not None for e in base_err)
    n_cand_err = sum(e is not None for e in cand_err)
    keep = [i for i in range(n_cases) if base_err[i] is None and cand_err[i] is None]
    n = len(keep)
    if kind == "pass_fail":
        xb = np.array([base[i].passed for i in keep], dtype=np.float64)
        xc = np.array([cand[i].passed for i in keep], dtype=np.float64)
    else:
        xb = np.array([base[i].score for i in keep], dtype=np.float64)
        xc = np.array([cand[i].score for i in keep], dtype=np.float64)
    confidence = 1.0 - thresholds.alpha
    discordant: tuple[int, int] | None = None
    test: Literal["mcnemar exact", "paired bootstrap"] = (
        "mcnemar exact" if kind == "pass_fail" else "paired bootstrap"
    )
    if n:
        boot = paired_bootstrap_test(
            xb, xc, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        if kind == "pass_fail":
            mc = mcnemar_exact(list(xb.astype(bool)), list(xc.astype(bool)))
            p_value = mc.p_value
            discordant = (mc.b, mc.c)
        else:
            p_value = boot.p_value
        base_rate, cand_rate = float(xb.mean()), float(xc.mean())
        second_moment = float(np.mean((xc - xb) ** 2))
        mde = minimum_detectable_effect(
            n,
            base_rate,
            alpha=thresholds.alpha,
            power=POWER,
            discordance=second_moment if second_moment > 0 else None,
        )
        ci_low, ci_high = 100.0 * boot.interval.low, 100.0 * boot.interval.high
    else:  # every case failed on one side: nothing to compare
        p_value, base_rate, cand_rate, mde, ci_low, ci_high = 1.0, 0.0, 0.0, 1.0, -100.0, 100.0
    delta = 100.0 * (cand_rate - base_rate)

    warnings = []
    small = small_n_warning(n, mde, thresholds.min_n)
    if small is not None:
        warnings.append(small)
    failed = n_cases - n
    if failed:
        warnings.append(
            f"{failed} of {n_cases} cases left out: {n_base_err} base / {n_cand_err} candidate "
            "calls failed"
        )
    incomplete = failed > thresholds.max_failed_fraction * n_cases + _EPS or n == 0
    rows = [
        CaseRow(
            case_id=ids[i],
            base=base[i],
            candidate=cand[i],
            base_output=base_outputs[i].text if base_outputs is not None else "",
            candidate_output=cand_outputs[i].text if cand_outputs is not None else "",
            base_error=base_err[i],
            candidate_error=cand_err[i],
        )
        for i in range(n_cases)
    ]
    return SuiteResult(
        name=name,
        label=f"{name} ({n_cases} held-out)" if role == "target" else f"{name} ({n_cases} cases)",
        role=role,
        kind=kind,
        n=n,
        n_cases=n_cases,
        base_rate=base_rate,
        candidate_rate=cand_rate,
        delta_points=delta,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        p_value=p_value,
        test=test,
        discordant=discordant,
        mde_points=100.0 * mde,
        small_n=n < thresholds.min_n,
        base_errors=n_base_err,
        candidate_errors=n_cand_err,
        warning="; ".join(warnings) or None,
        verdict="incomplete" if incomplete else classify(role, delta, ci_low, p_value, thresholds),
        thresholds=thresholds,
        rows=rows,
    )


def gate(
    results: Sequence[SuiteResult], contamination_ok: bool = True, fingerprint_ok: bool = True
) -> GateResult:
    """Pass only when every target suite wins, no suite is forgetting, contamination is within
    the spec's limit and the cases match the pinned fingerprint. Watch verdicts, failed model
    calls and small suites do not fail the gate; they are listed in ``notes``."""
    reasons: list[str] = []
    notes: list[str] = []
    if not results:
        reasons.append("no suite was evaluated")
    for r in results:
        if r.verdict == "incomplete":
            reasons.append(
                f"{r.name}: incomplete ({r.n_cases - r.n} of {r.n_cases} cases had a failed "
                "model call)"
            )
        elif r.verdict == "forgetting":
            reasons.append(f"{r.name}: forgetting ({r.delta_points:+.1f} pts, p={r.p_value:.2g})")
        elif r.role == "target" and r.verdict != "win":
            reasons.append(
                f"{r.name}: target suite did not win ({r.verdict}, "
                f"{r.delta_points:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}] pts)"
            )
        elif r.verdict == "watch":
            notes.append(f"{r.name}: watch ({r.delta_points:+.1f} pts, p={r.p_value:.2g})")
        if r.warning:
            notes.append(f"{r.name}: {r.warning}")
    if not contamination_ok:
        reasons.append("contamination: eval cases appear in the training data beyond the limit")
    if not fingerprint_ok:
        reasons.append("fingerprint: the eval cases differ from the pinned fingerprint")
    return GateResult(passed=not reasons, reasons=reasons, notes=notes)
