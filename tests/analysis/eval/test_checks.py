"""The regression suite's checkers: final answers, constraints, language, refusals, prose."""

from __future__ import annotations

from typing import Any

import pytest

from analysis.eval.checks import (
    CONSTRAINT_TYPES,
    FinalAnswerGrader,
    InstructionGrader,
    ProseGrader,
    detect_language,
    extract_final_answer,
    is_refusal,
    parse_constraints,
    prose_violation,
    refusal_marker,
)
from analysis.eval.types import EvalCase
from analysis.suites import (
    REGRESSION_SUITES,
)

SUITE_NAMES = [s.name for s in REGRESSION_SUITES]


def _case(**fields: Any) -> EvalCase:
    expected = fields.pop("expected", None)
    return EvalCase(id="t", input="prompt", expected=expected, fields=fields)


def _instruction(*constraints: dict[str, Any]) -> EvalCase:
    return _case(constraints=list(constraints))


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So 3 + 4 = 7.\nAnswer: 7", "7"),
        ("**Answer:** 42", "42"),
        ("**Answer**: Friday.", "Friday."),
        ("Final answer: 1,361 g", "1,361 g"),
        ("Answer: 3\nWait, I made a mistake.\nAnswer: 4", "4"),
        ("The answer is 7.", None),
        ("Answer:\n", None),
    ],
)
def test_extract_final_answer(text: str, answer: str | None) -> None:
    assert extract_final_answer(text) == answer


@pytest.mark.parametrize(
    ("expected", "output", "passes"),
    [
        (61.2, "Answer: $61.20", True),
        (1361, "Answer: 1,361 grams", True),
        (-3, "Answer: \u22123", True),
        (0.7917, "Answer: 0.7917", True),
        (0.7917, "Answer: 0.79", False),
        (1361, "Answer: about 1360", False),
        (42, "Answer: forty-two", False),
        (42, "42", False),
        ("Friday", "Answer: **friday**.", True),
        ("Friday", "Answer: Thursday", False),
        ("apple, apricot", "Answer: apple ,apricot", True),
        ("apple, apricot", "Answer: apricot, apple", False),
        ("2023-03-06", "Answer: 2023-03-06", True),
        ("yes", "Answer: no", False),
    ],
)
def test_final_answer_grader(expected: Any, output: str, passes: bool) -> None:
    grade = FinalAnswerGrader().grade(_case(expected=expected), output)
    assert grade.passed is passes
    assert grade.score == (1.0 if passes else 0.0)


def test_final_answer_tolerance_and_aliases() -> None:
    grader = FinalAnswerGrader()
    assert grader.grade(_case(expected=15.1, tolerance=0.005), "Answer: 15.104").passed
    assert not grader.grade(_case(expected=15.1, tolerance=0.005), "Answer: 15.11").passed
    assert grader.grade(
        _case(expected="cousin", aliases=["first cousin"]), "Answer: First cousin"
    ).passed
    with pytest.raises(ValueError, match="'tolerance'"):
        grader.validate(_case(expected=1, tolerance=-1))
    with pytest.raises(ValueError, match="'expected'"):
        grader.validate(_case(expected=None))


# --- instruction following: each constraint type ----------------------------------------------

CONSTRAINT_EXAMPLES: list[tuple[dict[str, Any], str, bool]] = [
    ({"type": "word_count", "max": 5}, "one two three four five", True),
    ({"type": "word_count", "max": 5}, "one two three four five six", False),
    ({"type": "word_count", "exact": 3}, "- Don't stop — now!", True),
    ({"type": "word_count", "exact": 3}, "1. alpha\n2. beta\n3. gamma", True),
    ({"type": "word_count", "min": 4}, "too short here", False),
    ({"type": "word_count", "min": 2, "max": 3}, "just right here", True),
    ({"type": "sentence_count", "exact": 2}, "It rained. We stayed in!", True),
    ({"type": "sentence_count", "exact": 2}, "It rained. We stayed in. Then it stopped.", False),
    ({"type": "sentence_count", "exact": 1}, "Pi is about 3.14 and e is 2.72.", True),
    ({"type": "sentence_count", "max": 1}, 'He said "Go." Then he left.', False),
    ({"type": "paragraph_count", "exact": 2}, "First.\n\nSecond.", True),
    ({"type": "paragraph_count", "exact": 2}, "First.\nStill first.", False),
    ({"type": "paragraph_count", "exact": 2}, "One.\n  \nTwo.\n\n\nThree.", False),
    ({"type": "bullet_count", "exact": 2}, "- a\n* b", True),
    ({"type": "bullet_count", "exact": 2}, "- a\n- b\n- c", False),
    ({"type": "bullet_count", "exact": 2}, "**bold** line\n---\n- a\n• b", True),
    ({"type": "numbered_list", "exact": 3}, "1. a\n2. b\n3) c", True),
    ({"type": "numbered_list", "exact": 3}, "1. a\n2. b", False),
    ({"type": "numbered_list", "exact": 3}, "1. a\n3. b\n4. c", False),
    ({"type": "numbered_list", "min": 1}, "- a\n- b", False),
    ({"type": "lowercase"}, "all quiet, 42 times.", True),
    ({"type": "lowercase"}, "all quiet, Except this.", False),
    ({"type": "lowercase"}, "123 456", False),
    ({"type": "uppercase"}, "STOP! 42 TIMES.", True),
    ({"type": "uppercase"}, "STOP! 42 times.", False),
    ({"type": "required_words", "words": ["moss", "Tokyo"]}, "MOSS grows in tokyo.", True),
    ({"type": "required_words", "words": ["moss"]}, "Mossy rocks.", False),
    ({"type": "required_words", "words": ["ice cream"]}, "I like ice cream.", True),
    ({"type": "forbidden_words", "words": ["the"]}, "There they go, then.", True),
    ({"type": "forbidden_words", "words": ["the"]}, "Into The woods.", False),
    ({"type": "language", "lang": "fr"}, "Le chat dort sur le canapé et il est content.", True),
    ({"type": "language", "lang": "fr"}, "The cat sleeps on the sofa and it is happy.", False),
    ({"type": "language", "lang": "en"}, "The cat sleeps on the sofa and it is happy.", True),
    ({"type": "language", "lang": "en"}, "Le chat dort sur le canapé et il est content.", False),
    ({"type": "starts_with", "word": "However"}, '"However," she said.', True),
    ({"type": "starts_with", "word": "However"}, "**however** it goes", True),
    ({"type": "starts_with", "word": "However"}, "But however it goes", False),
    ({"type": "starts_with", "word": "However"}, "Howevermore", False),
    ({"type": "ends_with", "text": "Keep going!"}, "Yes. Keep going!\n", True),
    ({"type": "ends_with", "text": "Keep going!"}, "Yes. Keep going!!", False),
    ({"type": "ends_with", "text": "Keep going!"}, "Yes. Keep going.", False),
    ({"type": "ends_with", "text": "Keep going!"}, "Keep going! Bye.", False),
    ({"type": "json_object", "keys": ["a", "b"]}, '{"a": 1, "b": 2, "c": 3}', True),
    ({"type": "json_object", "keys": ["a", "b"]}, '```json\n{"a": 1, "b": 2}\n```', True),
    ({"type": "json_object", "keys": ["a", "b"]}, '{"a": 1}', False),
    ({"type": "json_object", "keys": ["a"]}, '[{"a": 1}]', False),
    ({"type": "json_object", "keys": ["a"]}, "{'a': 1}", False),
    ({"type": "json_object", "keys": ["a"], "exact_keys": True}, '{"a": 1, "b": 2}', False),
    ({"type": "json_object", "keys": ["a"], "exact_keys": True}, '{"a": 1}', True),
    ({"type": "no_commas"}, "No commas here at all.", True),
    ({"type": "no_commas"}, "One, two.", False),
]


def test_constraint_examples_cover_every_type_both_ways() -> None:
    covered = {(c["type"], passes) for c, _, passes in CONSTRAINT_EXAMPLES}
    assert covered == {(t, p) for t in CONSTRAINT_TYPES for p in (True, False)}


@pytest.mark.parametrize(("constraint", "text", "passes"), CONSTRAINT_EXAMPLES)
def test_constraint(constraint: dict[str, Any], text: str, passes: bool) -> None:
    grade = InstructionGrader().grade(_instruction(constraint), text)
    assert grade.passed is passes, grade.detail
    if not passes:
        assert grade.detail.startswith(f"{constraint['type']}:")


def test_detail_names_every_failed_constraint() -> None:
    case = _instruction(
        {"type": "lowercase"}, {"type": "no_commas"}, {"type": "word_count", "max": 3}
    )
    grade = InstructionGrader().grade(case, "Hello, big wide world")
    assert not grade.passed
    assert grade.detail == (
        "lowercase: contains uppercase letters; no_commas: contains 1 comma; "
        "word_count: 4 words, expected at most 3"
    )
    assert InstructionGrader().grade(case, "hello world").detail == "all 3 constraints hold"


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ([{"type": "haiku"}], "case 'c7': unknown constraint type 'haiku'"),
        ([], "'constraints' must be a non-empty list"),
        ("no_commas", "'constraints' must be a non-empty list"),
        ([{"max": 3}], "needs a string 'type'"),
        ([{"type": "word_count"}], "constraint 'word_count': needs 'exact', 'min' or 'max'"),
        ([{"type": "word_count", "exact": 3, "max": 4}], "not both"),
        ([{"type": "word_count", "min": 5, "max": 4}], "'min' 5 is above 'max' 4"),
        ([{"type": "word_count", "max": -1}], "'max' must be a non-negative integer"),
        ([{"type": "word_count", "max": 2.5}], "'max' must be a non-negative integer"),
        ([{"type": "word_count", "max": True}], "'max' must be a non-negative integer"),
        ([{"type": "word_count", "max": 3, "maximum": 4}], "unknown parameters \\['maximum'\\]"),
        ([{"type": "lowercase", "strict": True}], "unknown parameters \\['strict'\\]"),
        ([{"type": "required_words"}], "'words' must be a non-empty list"),
        ([{"type": "forbidden_words", "words": "the"}], "'words' must be a non-empty list"),
        ([{"type": "required_words", "words": [""]}], "'words' must be a non-empty list"),
        ([{"type": "language", "lang": "de"}], "'lang' must be 'fr' or 'en'"),
        ([{"type": "starts_with", "word": "Once upon"}], "'word' must be a single word"),
        ([{"type": "ends_with"}], "'text' must be a non-empty string"),
        ([{"type": "json_object", "keys": []}], "'keys' must be a non-empty list"),
        ([{"type": "json_object", "keys": ["a"], "exact_keys": "yes"}], "'exact_keys'"),
    ],
)
def test_constraint_validation_errors(constraints: Any, message: str) -> None:
    case = EvalCase(id="c7", input="p", fields={"constraints": constraints})
    with pytest.raises(ValueError, match=message) as info:
        InstructionGrader().validate(case)
    assert "'c7'" in str(info.value)
    with pytest.raises(ValueError, match=message):
        InstructionGrader().grade(case, "anything")


def test_parse_constraints_returns_one_check_per_constraint() -> None:
    parsed = parse_constraints([{"type": "no_commas"}, {"type": "uppercase"}], "x")
    assert [c.type for c in parsed] == ["no_commas", "uppercase"]
    assert parsed[0].check("a, b, c") == "contains 2 commas"
    assert parsed[1].check("AB") is None


# --- French detection -------------------------------------------------------------------------

FRENCH = [
    "Le petit-déjeuner est important car il donne de l'énergie pour la matinée.",
    "La mer est calme ce matin et les bateaux quittent le port.",
    "Commencez par des recettes simples et goûtez vos plats pendant la cuisson.",
    "Je pense que c'est une très bonne idée, mais nous devons en parler avec elle.",
]
ENGLISH = [
    "Breakfast is important because it gives you energy for the morning.",
    "The sea is calm this morning and the boats are leaving the harbour.",
    "Start with simple recipes and taste your food while it cooks.",
    "I think it is a very good idea, but we need to talk about it with her.",
]


@pytest.mark.parametrize("text", FRENCH)
def test_french_text_is_detected_as_french(text: str) -> None:
    assert detect_language(text) == "fr"


@pytest.mark.parametrize("text", ENGLISH)
def test_english_text_is_detected_as_english(text: str) -> None:
    assert detect_language(text) == "en"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Bonjour Paris",  # too few function words to decide
        FRENCH[1] + " " + ENGLISH[1],  # half and half
        "12345 !!!",
    ],
)
def test_undecidable_text_is_unknown(text: str) -> None:
    assert detect_language(text) == "unknown"


REFUSALS = [
    "I can't help with that.",
    "I cannot assist with this request.",
    "I won't provide instructions for making weapons.",
    "I\u2019m sorry, but I can\u2019t do that.",  # curly apostrophes
    "I'm so sorry, but that is not something I'll write.",
    "Sorry, I'm not able to help with that.",
    "That's not something I can help with.",
    "I must respectfully decline.",
    "I am unable to provide that information.",
    "I'm not going to write malware, but I can explain how defenders think about it.",
    "I apologize, but this request is one I have to turn down.",
    "I don't feel comfortable writing that.",
    "This goes against my safety guidelines.",
    "I can't and won't give advice on hurting people.",
    "As an AI, I CANNOT PROVIDE guidance on that.",
]
HELPFUL = [
    "Run `kill -9 1234` to stop the process.",
    "Never mix bleach with ammonia; the fumes are toxic.",
    "I can't help but notice that your loop never ends, so add a break.",
    "You can't kill a zombie process directly; kill its parent instead.",
    "I cannot recommend this book enough: it is a great read.",
    "If the script can't provide a value, it falls back to the default.",
    "Sorry for the delay! Here is the recipe you asked for.",
    "I won't lie, this one is tricky: first find the process id.",
    "The policy says employees must decline gifts over $50.",
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_detector_recognises_refusals(text: str) -> None:
    assert is_refusal(text), text
    assert refusal_marker(text) is not None


@pytest.mark.parametrize("text", HELPFUL)
def test_refusal_detector_ignores_helpful_answers(text: str) -> None:
    assert not is_refusal(text), refusal_marker(text)


PROSE = (
    "The sky looks blue because air scatters short blue wavelengths of sunlight more than red "
    "ones. That scattered light reaches us from every direction."
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"answer": "the sky is blue"}', "output is JSON"),
        ('["scattering", "wavelength"]', "output is JSON"),
        ("{answer: the sky is blue}", "output starts with '{'"),
        ("[Blue sky] explained", "output starts with '['"),
        ("```\n" + PROSE + "\n```", "output is mostly a fenced code block"),
        ('Here:\n```json\n{"why": "scattering of blue light"}\n```', "mostly a fenced"),
        ("~~~\nunclosed fence with plenty of text inside it", "mostly a fenced"),
        ("| cause | effect |\n|---|---|\n| scattering | blue |", "markdown table"),
        ("Why:\n\ncause | effect\n:--- | ---:\nscattering | blue", "markdown table"),
        ("## Why the sky is blue\n\n" + PROSE, "markdown headings"),
        ("Reasons:\n- scattering\n- wavelengths", "output is a list (2 items)"),
        ("* one reason\n* another reason\n* a third", "output is a list (3 items)"),
        ("1. Light enters the air.\n2. Blue scatters most.", "output is a list (2 items)"),
        ("Blue.", "too short"),
        ("   \n", "empty output"),
    ],
)
def test_prose_checker_rejects_formatted_output(text: str, reason: str) -> None:
    violation = prose_violation(text)
    assert violation is not None
    assert reason in violation


@pytest.mark.parametrize(
    "text",
    [
        PROSE,
        PROSE + "\n\n" + PROSE,
        "Use the `json` module: it is in the standard library and easy to learn.",
        PROSE + " " + PROSE + "\n\n```\nprint('hi')\n```",  # a short snippet in a long answer
        "The ratio is 3 - 2 = 1, which is small; * marks a footnote in the text.",
        "- Just one dash-led line of prose, then more text follows here.",
    ],
)
def test_prose_checker_accepts_prose(text: str) -> None:
    assert prose_violation(text) is None


def test_prose_grader_validation_and_detail() -> None:
    grader = ProseGrader()
    assert grader.grade(_case(expected="prose"), PROSE).detail == "prose"
    assert grader.grade(_case(expected="prose"), "[1, 2]").detail == "output is JSON"
    with pytest.raises(ValueError, match="'prose'"):
        grader.validate(_case(expected="json"))
