"""Verdict rules and the gate on a typical gate table: a target-task win, one acceptable
suite, one forgetting, one safety suite."""

from __future__ import annotations

import pytest

from analysis.eval.spec import Thresholds
from analysis.eval.types import CaseOutput, Grade
from analysis.eval.verdict import SuiteResult, classify, gate, judge_suite

PASS = Grade(passed=True, score=1.0, detail="ok")
FAIL = Grade(passed=False, score=0.0, detail="wrong")
T = Thresholds()


def grades(
    both: int, base_only: int, cand_only: int, neither: int
) -> tuple[list[Grade], list[Grade]]:
    base = [PASS] * both + [PASS] * base_only + [FAIL] * cand_only + [FAIL] * neither
    cand = [PASS] * both + [FAIL] * base_only + [PASS] * cand_only + [FAIL] * neither
    return list(base), list(cand)


def suite(
    name: str, role: str, both: int, base_only: int, cand_only: int, neither: int
) -> SuiteResult:
    base, cand = grades(both, base_only, cand_only, neither)
    assert role in ("target", "regression")
    return judge_suite(
        name, "target" if role == "target" else "regression", T, "pass_fail", base, cand
    )


def gate_table() -> list[SuiteResult]:
    return [
        suite("target task", "target", 116, 6, 48, 30),  # 61 % -> 82 % on 200
        suite("general reasoning", "regression", 72, 2, 1, 25),  # 74 % -> 73 %
        suite("instruction following", "regression", 70, 18, 1, 11),  # 88 % -> 71 %
        suite("safety refusals", "regression", 97, 2, 0, 1),  # 99 % -> 97 %
    ]


def test_the_gate_table_gets_its_verdicts() -> None:
    target, general, instructions, safety = gate_table()
    assert (target.base_rate, target.candidate_rate, target.n) == (0.61, 0.82, 200)
    assert target.delta_points == pytest.approx(21.0)
    assert target.ci_low > 10 and target.ci_high < 32
    assert target.verdict == "win"
    assert (general.base_rate, general.candidate_rate) == (0.74, 0.73)
    assert general.verdict == "acceptable"
    assert instructions.delta_points == pytest.approx(-17.0)
    assert instructions.p_value < 0.001 and instructions.verdict == "forgetting"
    assert safety.delta_points == pytest.approx(-2.0) and safety.p_value == 0.5
    assert safety.verdict == "watch"
    assert target.test == "mcnemar exact" and target.discordant == (6, 48)
    assert target.label == "target task (200 held-out)"
    assert [r.case_id for r in target.rows[:2]] == ["1", "2"]


def test_gate_fails_on_forgetting_and_notes_watch() -> None:
    result = gate(gate_table())
    assert not result.passed
    assert result.reasons == [
        "instruction following: forgetting (-17.0 pts, p=7.6e-05)"
    ]  # 40 / 2**19
    assert any(note.startswith("safety refusals: watch (-2.0 pts") for note in result.notes)
    passing = gate([s for s in gate_table() if s.name != "instruction following"])
    assert passing.passed and passing.reasons == []


def test_gate_fails_on_a_target_that_does_not_win_and_on_input_problems() -> None:
    flat = suite("target task", "target", 100, 5, 7, 88)
    assert flat.verdict == "inconclusive"
    worse = suite("target task", "target", 100, 7, 5, 88)
    assert worse.verdict == "no improvement"
    result = gate([flat])
    assert (
        not result.passed
        and "target task: target suite did not win (inconclusive" in result.reasons[0]
    )
    ok = [gate_table()[0]]
    assert gate(ok).passed
    assert gate(ok, contamination_ok=False).reasons == [
        "contamination: eval cases appear in the training data beyond the limit"
    ]
    assert not gate(ok, fingerprint_ok=False).passed
    assert not gate([]).passed


@pytest.mark.parametrize(
    ("role", "delta", "ci_low", "p", "verdict"),
    [
        ("target", 21.0, 14.2, 1e-6, "win"),
        ("regression", 3.0, 0.5, 0.01, "win"),
        ("regression", -5.0, -9.0, 0.01, "forgetting"),
        ("regression", -4.99, -9.0, 0.01, "watch"),  # significant but under the line
        ("regression", -17.0, -25.0, 0.2, "watch"),  # large but not proven
        ("regression", -1.0, -4.0, 0.6, "acceptable"),
        ("regression", -1.0000000000000009, -4.0, 0.6, "acceptable"),  # rounding of 73 - 74
        ("regression", -1.01, -4.0, 0.6, "watch"),
        ("regression", -0.5, -1.0, 0.03, "watch"),  # a proven small drop
        ("target", 2.0, -1.0, 0.3, "inconclusive"),
        ("target", 0.0, -3.0, 1.0, "no improvement"),
        ("target", -8.0, -12.0, 0.001, "forgetting"),
    ],
)
def test_classify_rules(role: str, delta: float, ci_low: float, p: float, verdict: str) -> None:
    assert classify("target" if role == "target" else "regression", delta, ci_low, p, T) == verdict


def test_thresholds_are_configurable() -> None:
    strict = Thresholds(forgetting_points=1.0, watch_points=0.5, win_margin=5.0, alpha=0.1)
    assert classify("regression", -1.5, -4.0, 0.08, strict) == "forgetting"
    assert classify("regression", -0.6, -2.0, 0.5, strict) == "watch"
    assert classify("target", 6.0, 4.0, 0.01, strict) == "inconclusive"


def test_small_suites_get_the_noise_warning() -> None:
    small = suite("tiny", "regression", 5, 1, 2, 2)
    assert small.n == 10 and small.small_n
    assert small.warning is not None
    assert small.warning.startswith("n=10: deltas this small are noise (MDE ±")
    assert small.mde_points >= 60.0
    assert suite("big", "regression", 72, 2, 1, 25).warning is None


def test_failed_model_calls_leave_the_comparison_and_make_the_suite_incomplete() -> None:
    base, cand = grades(8, 0, 0, 2)
    cand_with_errors: list[Grade | None] = [None, None, *cand[2:]]
    outputs = [CaseOutput(case_id=f"c{i}", model="cand", text=f"out {i}") for i in range(10)]
    outputs[2] = CaseOutput(case_id="c2", model="cand", error="HTTP 500")
    result = judge_suite(
        "s",
        "regression",
        Thresholds(min_n=1),
        "pass_fail",
        base,
        cand_with_errors,
        case_ids=[f"c{i}" for i in range(10)],
        cand_outputs=outputs,
    )
    assert result.candidate_errors == 3 and result.base_errors == 0
    assert result.n == 7 and result.n_cases == 10
    # both rates over the 7 complete pairs (cases 3-9: five pass, two fail on both sides)
    assert result.candidate_rate == pytest.approx(5 / 7) == result.base_rate
    assert result.warning == "3 of 10 cases left out: 0 base / 3 candidate calls failed"
    assert result.verdict == "incomplete"
    assert not gate([result]).passed
    assert gate([result]).reasons == ["s: incomplete (3 of 10 cases had a failed model call)"]
    row = result.rows[2]
    assert row.candidate_error == "HTTP 500" and not row.candidate.passed
    assert row.candidate.detail == "candidate call failed: HTTP 500"
    assert result.rows[0].candidate_error == "no output"
    assert result.rows[5].candidate_output == "out 5"


def test_a_failing_base_cannot_make_the_candidate_win() -> None:
    """A typo in the base model's name: every base call fails. Counting those as base
    failures would hand the candidate a win; the suite is incomplete instead."""
    base: list[Grade | None] = [None] * 40
    cand = [PASS] * 35 + [FAIL] * 5
    result = judge_suite("target", "target", T, "pass_fail", base, cand)
    assert result.verdict == "incomplete" and result.n == 0
    assert not gate([result]).passed


def test_a_few_failed_calls_within_the_allowance_keep_the_verdict() -> None:
    base, cand = grades(40, 0, 55, 5)
    cand_f: list[Grade | None] = [None, *cand[1:]]
    result = judge_suite("t", "target", Thresholds(max_failed_fraction=0.02), "pass_fail",
                         base, cand_f)  # fmt: skip
    assert result.n == 99 and result.verdict == "win"


def test_a_win_needs_the_exact_test_too() -> None:
    """4 discordant pairs, all for the candidate: the bootstrap's lower bound is above 0 but
    McNemar's exact p is 0.125; that is not a proven gain."""
    base, cand = grades(90, 0, 4, 6)
    result = judge_suite("t", "target", T, "pass_fail", base, cand)
    assert result.ci_low > 0 and result.p_value == pytest.approx(0.125)
    assert result.verdict == "inconclusive"


def test_score_suites_use_mean_scores_and_the_bootstrap() -> None:
    base = [Grade(passed=s >= 0.5, score=s) for s in [0.2, 0.4, 0.5, 0.3, 0.6] * 20]
    cand = [Grade(passed=s >= 0.5, score=s) for s in [0.6, 0.7, 0.8, 0.5, 0.9] * 20]
    result = judge_suite("tone", "target", T, "score", base, cand)
    assert result.test == "paired bootstrap" and result.discordant is None
    assert result.base_rate == pytest.approx(0.4) and result.candidate_rate == pytest.approx(0.7)
    assert result.delta_points == pytest.approx(30.0)
    assert result.verdict == "win" and result.p_value == 0.0


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        judge_suite("s", "regression", T, "pass_fail", [PASS], [PASS, FAIL])
    with pytest.raises(ValueError, match="no cases"):
        judge_suite("s", "regression", T, "pass_fail", [], [])
