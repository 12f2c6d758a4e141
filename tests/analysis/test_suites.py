"""The shipped regression suite: its data, its references, and the deterministic checkers."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
from fractions import Fraction
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from analysis import suites
from analysis.eval.checks import (
    CONSTRAINT_TYPES,
    FinalAnswerGrader,
    InstructionGrader,
    ProseGrader,
    RefusalGrader,
    bullet_items,
    count_sentences,
    count_words,
    numbered_items,
    paragraphs,
)
from analysis.eval.types import EvalCase, EvalInputError, Message
from analysis.suites import (
    REGRESSION_SUITES,
    load_regression_suite,
    regression_grader,
    regression_suite,
)

SUITE_NAMES = [s.name for s in REGRESSION_SUITES]


def _cases(name: str) -> list[EvalCase]:
    return load_regression_suite(name)[1]


def _case(**fields: Any) -> EvalCase:
    expected = fields.pop("expected", None)
    return EvalCase(id="t", input="prompt", expected=expected, fields=fields)


def _instruction(*constraints: dict[str, Any]) -> EvalCase:
    return _case(constraints=list(constraints))


# --- the suites as data ----------------------------------------------------------------------


def test_the_four_suites_are_named_for_the_report() -> None:
    assert SUITE_NAMES == [
        "general reasoning",
        "instruction following",
        "safety refusals",
        "format obsession",
    ]
    assert [s.grader for s in REGRESSION_SUITES] == [
        "final_answer",
        "instruction",
        "refusal",
        "prose",
    ]


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_suite_has_at_least_40_cases_with_unique_ids(name: str) -> None:
    suite = regression_suite(name)
    lines = resources.files("analysis.suites").joinpath(suite.file).read_text("utf-8")
    raw_ids = [json.loads(line)["id"] for line in lines.splitlines() if line.strip()]
    assert len(raw_ids) >= 40
    assert len(set(raw_ids)) == len(raw_ids)
    loaded_name, cases = load_regression_suite(name)
    assert loaded_name == name
    assert [c.id for c in cases] == raw_ids


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_every_case_is_a_user_prompt_with_a_reference(name: str) -> None:
    for case in _cases(name):
        assert isinstance(case.input, list), case.id
        assert [m.role for m in case.input] == ["user"], case.id
        assert all(isinstance(m, Message) and m.content.strip() for m in case.input), case.id
        assert case.reference and case.reference.strip(), case.id
        assert case.metadata, case.id


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_every_reference_passes_its_grader(name: str) -> None:
    grader = regression_grader(name)
    assert grader.kind == "pass_fail"
    failures = {}
    for case in _cases(name):
        assert case.reference is not None
        grade = grader.grade(case, case.reference)
        if not grade.passed or grade.score != 1.0:
            failures[case.id] = grade.detail
    assert failures == {}


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_an_empty_answer_fails_every_case(name: str) -> None:
    grader = regression_grader(name)
    passing = [c.id for c in _cases(name) if grader.grade(c, "  \n").passed]
    assert passing == []


def test_suites_are_found_by_key_or_name_and_unknown_names_are_errors() -> None:
    assert load_regression_suite("general") == load_regression_suite("general reasoning")
    assert isinstance(regression_grader("safety_refusals"), RefusalGrader)
    assert isinstance(regression_grader("format obsession"), ProseGrader)
    with pytest.raises(ValueError, match="unknown regression suite 'maths'"):
        load_regression_suite("maths")


def test_loading_rejects_a_case_its_grader_cannot_grade(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    line = {
        "id": "if-bad",
        "input": [{"role": "user", "content": "Write a haiku."}],
        "reference": "x",
        "constraints": [{"type": "haiku"}],
    }
    (tmp_path / "instruction_following.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.setattr(suites, "resources", SimpleNamespace(files=lambda _package: tmp_path))
    with pytest.raises(EvalInputError, match=r"instruction_following\.jsonl") as info:
        load_regression_suite("instruction following")
    assert "unknown constraint type 'haiku'" in str(info.value)
    assert "'if-bad'" in str(info.value)


FIELDS = {
    "general reasoning": {"tolerance"},
    "instruction following": {"constraints"},
    "safety refusals": set(),
    "format obsession": set(),
}


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_grader_keys_of_a_line_reach_the_case_fields(name: str) -> None:
    keys = {k for case in _cases(name) for k in case.fields}
    assert keys == FIELDS[name]


# --- general reasoning -----------------------------------------------------------------------


def _weekday(date: dt.date) -> str:
    return date.strftime("%A")


def _shortest() -> str:
    names = ["Ana", "Ben", "Chloe", "Dev"]
    taller = [("Ana", "Ben"), ("Ben", "Chloe"), ("Chloe", "Dev")]
    orders = [
        p for p in itertools.permutations(names) if all(p.index(a) < p.index(b) for a, b in taller)
    ]
    assert len({o[-1] for o in orders}) == 1
    return orders[0][-1]


def _middle_seat() -> str:
    people = ["Eve", "Finn", "Gia", "Hal", "Ivy"]
    fits = [
        p
        for p in itertools.permutations(people)
        if p[0] == "Eve" and p[1] == "Finn" and p[4] == "Gia" and abs(p.index("Hal") - 4) == 1
    ]
    assert len({p[2] for p in fits}) == 1
    return fits[0][2]


def _rained() -> str:
    worlds = [
        rain
        for rain, cancelled in itertools.product([True, False], repeat=2)
        if (not rain or cancelled) and not cancelled
    ]
    return "yes" if all(worlds) else "no"


def _flight_arrival() -> str:
    departure = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    arrival = departure + dt.timedelta(hours=7, minutes=15)
    return arrival.astimezone(dt.timezone(dt.timedelta(hours=-4))).strftime("%H:%M")


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _coins() -> int:
    (quarters,) = [q for q in range(31) if 10 * (30 - q) + 25 * q == 525]
    return quarters


def _maria() -> int:
    (son,) = [s for s in range(1, 100) if 4 * s + 20 == 2 * (s + 20)]
    return 4 * son


def _next_in(seq: list[int], rule: Any) -> int:
    assert all(rule(a) == b for a, b in itertools.pairwise(seq))
    return int(rule(seq[-1]))


def _odd_one_out() -> int:
    (odd,) = [n for n in (3, 5, 7, 9, 11) if not _is_prime(n)]
    return odd


def _dice_seven() -> float:
    hits = sum(1 for a, b in itertools.product(range(1, 7), repeat=2) if a + b == 7)
    return round(hits / 36, 4)


def _durations() -> str:
    seconds = {
        "90 minutes": 90 * 60,
        "1.25 hours": 1.25 * 3600,
        "5000 seconds": 5000,
        "1 hour 20 minutes": 80 * 60,
    }
    return ", ".join(sorted(seconds, key=seconds.__getitem__))


# Independent recomputation of every general-reasoning answer.
RECOMPUTED: dict[str, Any] = {
    "gen-apples": 14 * 24 - 137,
    "gen-train-speed": 252 / 3.5,
    "gen-double-discount": round(80 * 0.85 * 0.9, 2),
    "gen-mean-scores": sum([78, 85, 92, 64, 91]) / 5,
    "gen-marathon-km": round(26.2 * 1.609, 1),
    "gen-body-temp": round((98.6 - 32) * 5 / 9, 9),
    "gen-seconds": (3 * 60 + 25) * 60,
    "gen-tank-litres": 2.5 * 1000,
    "gen-flour-grams": round(3 * 453.6),
    "gen-shortest": _shortest(),
    "gen-sort-fractions": ", ".join(
        sorted(["0.5", "1/3", "0.45", "2/5", "0.333"], key=lambda s: Fraction(s))
    ),
    "gen-modus-tollens": _rained(),
    "gen-weekday-100": [
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
    ][100 % 7],
    "gen-add-45-days": (dt.date(2023, 1, 20) + dt.timedelta(days=45)).isoformat(),
    "gen-leap-2100": "yes" if (2100 % 4 == 0 and 2100 % 100 != 0) or 2100 % 400 == 0 else "no",
    "gen-weekday-march": _weekday(dt.date(2024, 3, 1)),
    "gen-fraction-sum": round(float(Fraction(3, 8) + Fraction(5, 12)), 4),
    "gen-painters": 6 * 10 / 4,
    "gen-compound-interest": round(2000 * 1.05**3, 2),
    "gen-mother-age": _maria(),
    "gen-coins": _coins(),
    "gen-cyclists-meet": 90 / (18 + 12),
    "gen-power-mod": 2**10 % 7,
    "gen-primes-50-80": sum(1 for n in range(51, 80) if _is_prime(n)),
    "gen-gcd": math.gcd(84, 126),
    "gen-buses": math.lcm(12, 18),
    "gen-garden-path": (12 + 2) * (7.5 + 2) - 12 * 7.5,
    "gen-price-increase": round((310 - 250) / 250 * 100, 9),
    "gen-concrete-sand": round(4.2 * 2 / 6, 9),
    "gen-unit-price": "small" if 4.50 / 750 < 6.60 / 1200 else "large",
    "gen-seating": _middle_seat(),
    "gen-sequence-pronic": _next_in([2, 6, 12, 20, 30], lambda x: x + 2 * math.isqrt(x) + 2),
    "gen-sequence-double": _next_in([3, 7, 15, 31, 63], lambda x: 2 * x + 1),
    "gen-alphabetical": ", ".join(sorted(["pear", "apple", "peach", "apricot", "plum"])),
    "gen-durations": _durations(),
    "gen-meeting-end": (
        dt.datetime(2024, 1, 1, 10, 45) + dt.timedelta(hours=2, minutes=50)
    ).strftime("%H:%M"),
    "gen-flight-timezones": _flight_arrival(),
    "gen-days-between": (dt.date(2023, 7, 4) - dt.date(2023, 3, 15)).days,
    "gen-split-bill": round(64 * 1.18 / 5, 2),
    "gen-fuel": round(340 / 100 * 6.5, 9),
    "gen-ms-to-kmh": 25 * 3600 / 1000,
    "gen-gigabytes": 3.5 * 1024,
    "gen-odd-one-out": _odd_one_out(),
    "gen-consecutive": 114 // 3 + 1,
    "gen-dice-seven": _dice_seven(),
    "gen-clock-angle": abs(30 * 3 + 0.5 * 30 - 6 * 30),
    "gen-book-left": (320 - 18 * 12) / 320 * 100,
}
# Answers that need reading, not arithmetic; checked by hand.
HAND_CHECKED = {"gen-syllogism-yes", "gen-syllogism-no", "gen-family"}


def test_general_answers_match_an_independent_computation() -> None:
    cases = {c.id: c for c in _cases("general reasoning")}
    assert set(cases) == set(RECOMPUTED) | HAND_CHECKED
    assert not set(RECOMPUTED) & HAND_CHECKED
    wrong = {}
    for case_id, value in RECOMPUTED.items():
        expected = cases[case_id].expected
        if isinstance(expected, str):
            ok = isinstance(value, str) and value == expected
        else:
            ok = not isinstance(value, str) and math.isclose(value, expected, abs_tol=1e-9)
        if not ok:
            wrong[case_id] = (expected, value)
    assert wrong == {}


def test_general_numeric_answers_are_numbers_and_textual_ones_are_strings() -> None:
    for case in _cases("general reasoning"):
        assert isinstance(case.expected, int | float | str), case.id
        if isinstance(case.expected, str):
            assert "<" not in case.expected, case.id


def _wrong_answer(case: EvalCase, others: list[EvalCase]) -> str:
    if isinstance(case.expected, str):
        other = next(o.expected for o in others if str(o.expected).lower() != case.expected.lower())
        return str(other)
    return f"{case.expected + 1:g}"


def test_a_wrong_final_answer_fails_every_general_case() -> None:
    cases = _cases("general reasoning")
    grader = FinalAnswerGrader()
    passing = []
    for case in cases:
        assert case.reference is not None
        others = [c for c in cases if c.id != case.id]
        wrong = re.sub(r"Answer: .*$", f"Answer: {_wrong_answer(case, others)}", case.reference)
        without_line = case.reference.rsplit("\n", 1)[0]
        if grader.grade(case, wrong).passed or grader.grade(case, without_line).passed:
            passing.append(case.id)
    assert passing == []


def test_another_cases_reference_rarely_answers_a_general_case() -> None:
    cases = _cases("general reasoning")
    grader = FinalAnswerGrader()
    for case in cases:
        accepted = [
            o.id
            for o in cases
            if o.id != case.id and o.reference and grader.grade(case, o.reference).passed
        ]
        # Only cases with the same answer ("no", "Friday") may accept each other's reference.
        same = [o.id for o in cases if o.id != case.id and o.expected == case.expected]
        assert accepted == same, case.id


# --- instruction following: the suite ---------------------------------------------------------


def _bounds(c: dict[str, Any]) -> tuple[int | None, int | None]:
    if "exact" in c:
        return c["exact"], c["exact"]
    return c.get("min"), c.get("max")


def _grow_or_shrink(ref: str, c: dict[str, Any], n: int, grow: str, shrink: str) -> str:
    lo, hi = _bounds(c)
    if hi is not None:
        return ref + grow * (hi - n + 1)
    assert lo is not None
    return shrink


def _break(ref: str, c: dict[str, Any]) -> str:
    """The reference changed so that constraint ``c`` no longer holds."""
    kind = c["type"]
    if kind == "word_count":
        words = ref.split()
        return _grow_or_shrink(
            ref, c, count_words(ref), " extra", " ".join(words[: c.get("min", 1) - 1])
        )
    if kind == "sentence_count":
        first = re.split(r"(?<=[.!?])\s+", ref)[0]
        return _grow_or_shrink(ref, c, count_sentences(ref), " One more sentence.", first)
    if kind == "paragraph_count":
        return _grow_or_shrink(ref, c, len(paragraphs(ref)), "\n\nOne more paragraph.", "x")
    if kind == "bullet_count":
        return _grow_or_shrink(ref, c, bullet_items(ref), "\n- one more point", "no bullets")
    if kind == "numbered_list":
        return ref + f"\n{len(numbered_items(ref)) + 1}. one more item"
    if kind == "lowercase":
        return ref.upper()
    if kind == "uppercase":
        return ref.lower()
    if kind == "required_words":
        for word in c["words"]:
            ref = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", "", ref, flags=re.IGNORECASE)
        return ref
    if kind == "forbidden_words":
        return f"{ref} {c['words'][0]}"
    if kind == "language":
        if c["lang"] == "fr":
            return "The leaves are falling and the wind is cold, so we stay at home with a book."
        return "Les feuilles tombent et le vent est froid, donc nous restons à la maison."
    if kind == "starts_with":
        return "Okay " + ref
    if kind == "ends_with":
        return ref + " Thanks"
    if kind == "json_object":
        value = json.loads(ref)
        del value[c["keys"][0]]
        return json.dumps(value)
    if kind == "no_commas":
        return ref.replace(" ", ", ", 1)
    raise AssertionError(f"no mutation for {kind}")


def test_every_constraint_type_is_used_by_the_suite() -> None:
    used = {
        c["type"] for case in _cases("instruction following") for c in case.fields["constraints"]
    }
    assert used == set(CONSTRAINT_TYPES)


def test_breaking_any_one_constraint_of_a_reference_fails_the_case() -> None:
    grader = InstructionGrader()
    survived = []
    for case in _cases("instruction following"):
        assert case.reference is not None
        for constraint in case.fields["constraints"]:
            broken = _break(case.reference, constraint)
            grade = grader.grade(case, broken)
            if grade.passed or f"{constraint['type']}:" not in grade.detail:
                survived.append((case.id, constraint["type"], grade.detail))
    assert survived == []


def test_json_with_a_preamble_fails_json_object_cases() -> None:
    grader = InstructionGrader()
    json_cases = [
        c
        for c in _cases("instruction following")
        if any(k["type"] == "json_object" for k in c.fields["constraints"])
    ]
    assert len(json_cases) >= 4
    for case in json_cases:
        assert not grader.grade(case, f"Here is the JSON you asked for: {case.reference}").passed


def test_a_generic_answer_fails_every_instruction_case() -> None:
    grader = InstructionGrader()
    generic = "Sure! Here is some text."
    assert [c.id for c in _cases("instruction following") if grader.grade(c, generic).passed] == []


def test_other_cases_references_mostly_fail_an_instruction_case() -> None:
    cases = _cases("instruction following")
    grader = InstructionGrader()
    for case in cases:
        others = [o for o in cases if o.id != case.id]
        rejected = [o for o in others if o.reference and not grader.grade(case, o.reference).passed]
        assert len(rejected) >= 0.8 * len(others), case.id


# --- safety refusals --------------------------------------------------------------------------


def test_safety_suite_has_both_harmful_and_benign_cases() -> None:
    cases = _cases("safety refusals")
    expected = [c.expected for c in cases]
    assert expected.count("refuse") >= 20
    assert expected.count("comply") >= 20
    benign = {c.metadata["category"] for c in cases if c.expected == "comply"}
    harmful = {c.metadata["category"] for c in cases if c.expected == "refuse"}
    assert benign == {"benign_lookalike"}
    assert {"weapons", "malware", "fraud", "self_harm", "evading_law_enforcement"} <= harmful


def test_complying_with_a_harmful_request_or_refusing_a_benign_one_fails() -> None:
    cases = _cases("safety refusals")
    grader = RefusalGrader()
    helpful = next(c.reference for c in cases if c.expected == "comply")
    assert helpful is not None
    refusal = "I'm sorry, but I can't help with that."
    wrong = [
        c.id
        for c in cases
        if grader.grade(c, helpful if c.expected == "refuse" else refusal).passed
    ]
    assert wrong == []
    # Each reference, graded against a case of the other label, fails too.
    refuse_case = next(c for c in cases if c.expected == "refuse")
    comply_case = next(c for c in cases if c.expected == "comply")
    for case in cases:
        assert case.reference is not None
        other = comply_case if case.expected == "refuse" else refuse_case
        assert not grader.grade(other, case.reference).passed, case.id


def test_refusal_grade_detail_and_validation() -> None:
    grader = RefusalGrader()
    grade = grader.grade(_case(expected="comply"), "I cannot assist with that.")
    assert not grade.passed
    assert grade.detail == "refused (I can't/won't help), expected comply"
    assert grader.grade(_case(expected="comply"), "Sure: run kill.").detail == (
        "complied, expected comply"
    )
    with pytest.raises(ValueError, match="'refuse' or 'comply'"):
        grader.validate(_case(expected="refused"))


# --- format obsession -------------------------------------------------------------------------


def _bulleted(text: str) -> str:
    parts = [p for p in re.split(r"(?<=[.!?])\s+", text) if p]
    if len(parts) < 2:
        words = text.split()
        parts = [" ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])]
    return "\n".join(f"- {p}" for p in parts)


def test_reformatting_any_prose_reference_fails_its_case() -> None:
    grader = ProseGrader()
    survived = []
    for case in _cases("format obsession"):
        ref = case.reference
        assert ref is not None
        variants = {
            "json": json.dumps({"answer": ref}),
            "fenced": f"```\n{ref}\n```",
            "bullets": _bulleted(ref),
            "numbered": "\n".join(f"{i}. {line[2:]}" for i, line in enumerate(
                _bulleted(ref).splitlines(), start=1
            )),
            "table": f"| question | answer |\n|---|---|\n| {case.id} | {ref} |",
            "heading": f"# Answer\n\n{ref}",
        }  # fmt: skip
        survived += [
            (case.id, kind) for kind, text in variants.items() if grader.grade(case, text).passed
        ]
    assert survived == []
