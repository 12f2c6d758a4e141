"""Case files: parsing and its errors, normalisation, hashing, contamination."""

from __future__ import annotations

import json
import random

import pytest

import analysis.eval.cases as cases_mod
from analysis.eval.cases import (
    case_hash,
    case_text,
    contamination_within,
    find_contamination,
    fingerprint,
    normalise_text,
    parse_cases,
    train_texts_from_jsonl,
)
from analysis.eval.types import ContaminationHit, EvalCase, EvalInputError, Message


def _jsonl(*objs: object) -> str:
    return "\n".join(json.dumps(o) for o in objs) + "\n"


# --- parsing -----------------------------------------------------------------------------------


def test_parse_cases_reads_both_input_shapes_and_keeps_unknown_keys_in_fields() -> None:
    text = _jsonl(
        {"id": "a", "input": "What is 2+2?", "expected": "4", "schema": {"type": "object"}},
        {
            "id": 7,
            "input": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "reference": "Hello",
            "metadata": {"tag": "greeting"},
            "fields": {"tolerance": 0.5},
            "pattern": "^Hello",
        },
    )
    cases = parse_cases("\n" + text + "\n\n", "suite.jsonl")
    assert [c.id for c in cases] == ["a", "7"]
    assert cases[0].input == "What is 2+2?"
    assert cases[0].fields == {"schema": {"type": "object"}}
    assert cases[1].input == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi"),
    ]
    assert cases[1].fields == {"tolerance": 0.5, "pattern": "^Hello"}
    assert cases[1].metadata == {"tag": "greeting"}
    assert cases[1].reference == "Hello"


def test_dumped_cases_parse_back_equal() -> None:
    original = parse_cases(_jsonl({"id": "x", "input": "q", "expected": ["a", "b"], "k": 1}), "s")
    again = parse_cases(original[0].model_dump_json() + "\n", "s")
    assert again == original


@pytest.mark.parametrize(
    ("lines", "line_no", "needle"),
    [
        (['{"id": "a", "input": "q"}', "", '{"id": "b", "input": '], 3, "not valid JSON"),
        (['["a", "b"]'], 1, "expected a JSON object"),
        (['{"input": "q"}'], 1, "missing or empty 'id'"),
        (['{"id": "", "input": "q"}'], 1, "missing or empty 'id'"),
        (['{"id": "a", "input": "q"}', '{"id": "b"}'], 2, "case 'b': missing or empty 'input'"),
        (['{"id": "a", "input": [{"role": "robot", "content": "x"}]}'], 1, "case 'a': input"),
        (['{"id": "a", "input": "q", "metadata": 3}'], 1, "metadata"),
    ],
)
def test_parse_errors_name_source_line_and_problem(
    lines: list[str], line_no: int, needle: str
) -> None:
    with pytest.raises(EvalInputError) as info:
        parse_cases("\n".join(lines), "suite.jsonl")
    message = str(info.value)
    assert message.startswith(f"suite.jsonl:{line_no}: ")
    assert needle in message
    assert info.value.line == line_no
    assert isinstance(info.value, ValueError)


def test_duplicate_id_names_both_lines() -> None:
    text = _jsonl({"id": "a", "input": "q"}, {"id": "b", "input": "r"}, {"id": "a", "input": "s"})
    with pytest.raises(
        EvalInputError, match=r"suite\.jsonl:3: duplicate id 'a' \(first used on line 1\)"
    ):
        parse_cases(text, "suite.jsonl")


def test_empty_file_is_an_error() -> None:
    with pytest.raises(EvalInputError, match="no cases"):
        parse_cases("\n  \n", "empty.jsonl")


def test_line_numbers_ignore_unicode_line_separators_inside_strings() -> None:
    # U+2028 is legal inside a JSON string; splitlines() would count it as a line break.
    text = '{"id": "a", "input": "x\u2028y"}\n{"id": "b"}\n'
    with pytest.raises(EvalInputError, match=r"s:2: "):
        parse_cases(text, "s")


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello,\u00a0  WORLD!! ", "hello, world"),
        ("Straße", "strasse"),
        ("\uff21\uff22\uff23", "abc"),  # full-width letters (NFKC)
        ("«Paris.»", "paris"),
        ("U.S.A.", "u.s.a"),
        ("line one\n\tline two", "line one line two"),
        ("$5 + 3%", "$5 + 3%"),  # symbols, and % at the end, are kept
        ("I like C#.", "i like c#"),
        ("**bold**", "bold"),
        ("...", ""),
    ],
)
def test_normalise_text(raw: str, expected: str) -> None:
    assert normalise_text(raw) == expected


def test_case_text_joins_messages_or_returns_the_prompt() -> None:
    chat = EvalCase(
        id="c",
        input=[
            Message(role="system", content="sys"),
            Message(role="user", content="u1"),
            Message(role="assistant", content="a1"),
            Message(role="user", content="u2"),
        ],
    )
    assert case_text(chat) == "sys\nu1\na1\nu2"
    assert case_text(chat, roles=("user",)) == "u1\nu2"
    assert case_text(EvalCase(id="p", input="prompt")) == "prompt"


# --- hashing ----------------------------------------------------------------------------------


def _case(id_: str, text: str, expected: object = "x") -> EvalCase:
    return EvalCase(id=id_, input=[Message(role="user", content=text)], expected=expected)


def test_case_hash_ignores_id_case_and_spacing_but_not_content() -> None:
    base = case_hash(_case("a", "What is the capital of France?"))
    assert case_hash(_case("renamed", "  what is the CAPITAL of france? ")) == base
    assert case_hash(_case("a", "What is the capital of Spain?")) != base
    assert case_hash(_case("a", "What is the capital of France?", expected="y")) != base
    as_system = EvalCase(
        id="a",
        input=[Message(role="system", content="What is the capital of France?")],
        expected="x",
    )
    assert case_hash(as_system) != base
    assert len(base) == 64 and int(base, 16) >= 0
    # a judge is shown the reference answer: changing it changes what is measured
    with_ref = _case("a", "What is the capital of France?").model_copy(
        update={"reference": "Paris"}
    )
    assert case_hash(with_ref) != base
    assert case_hash(with_ref.model_copy(update={"reference": "Lyon"})) != case_hash(with_ref)


def test_fingerprint_is_order_independent_and_sensitive() -> None:
    suite = [_case(str(i), f"question {i}", expected=str(i)) for i in range(20)]
    fp = fingerprint(suite)
    assert fingerprint(list(reversed(suite))) == fp
    changed = [*suite[:-1], _case("19", "question 19", expected="different")]
    assert fingerprint(changed) != fp
    assert fingerprint(suite[:-1]) != fp
    assert fingerprint([*suite, _case("20", "question 20")]) != fp


# --- training texts ---------------------------------------------------------------------------


def test_train_texts_from_common_formats_keep_line_alignment() -> None:
    text = _jsonl(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "chat question"},
                {"role": "assistant", "content": "answer"},
            ]
        },
        {"prompt": "completion prompt", "completion": "done"},
    )
    text += "\n"  # a blank line 3
    text += _jsonl(
        {"input": "plain input"},
        {"input": [{"role": "user", "content": "input chat"}]},
        {"text": "raw text"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]},
    )
    assert train_texts_from_jsonl(text) == [
        "chat question",
        "completion prompt",
        "",
        "plain input",
        "input chat",
        "raw text",
        "parts",
        "",  # the trailing newline's empty line
    ]


def test_unrecognised_training_line_is_an_error_with_its_line() -> None:
    text = _jsonl({"prompt": "ok"}, {"question": "?", "answer": "!"})
    with pytest.raises(
        EvalInputError,
        match=r"train\.jsonl:2: unrecognised training line \(keys: answer, question\)",
    ):
        train_texts_from_jsonl(text, "train.jsonl")
    with pytest.raises(EvalInputError, match=r"train\.jsonl:1: not valid JSON"):
        train_texts_from_jsonl("{oops\n", "train.jsonl")


# --- contamination ----------------------------------------------------------------------------

QUESTIONS = [
    "How do I reset my password on the mobile app?",
    "Can I get a refund for an annual plan after three months?",
    "Why was my card charged twice this month?",
    "How do I export my invoices as PDF files?",
    "What is the difference between the Pro and Team plans?",
    "How do I add a second admin to my workspace?",
    "Is there a student discount available?",
    "How can I delete my account permanently?",
    "Why does the desktop app crash when I open large files?",
    "Can I change the billing currency of my subscription?",
]


def _eval_cases() -> list[EvalCase]:
    return [
        EvalCase(id=f"case-{i}", input=[Message(role="user", content=q)], expected="x")
        for i, q in enumerate(QUESTIONS)
    ]


def _training_file() -> str:
    lines: list[object] = [
        {"prompt": f"Unrelated training prompt number {i} about topic {i * 7}", "completion": "."}
        for i in range(40)
    ]
    # held-out case 3, verbatim, in chat format
    lines[5] = {
        "messages": [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": QUESTIONS[3]},
            {"role": "assistant", "content": "Go to Billing."},
        ]
    }
    # held-out case 7 with changed whitespace and letter case
    lines[17] = {"prompt": "  how can I   DELETE my account\npermanently? ", "completion": "..."}
    # held-out case 1 with one word changed: a near duplicate
    lines[30] = {"input": "Can I get a refund for an annual plan after four months?"}
    # same topic as case 0 but a different question: must not be flagged
    lines[33] = {"text": "How do I change my password on the web app? Use Settings."}
    return "\n".join(json.dumps(line) for line in lines)


def test_contamination_lists_exactly_the_leaked_cases() -> None:
    train = train_texts_from_jsonl(_training_file(), "train.jsonl")
    hits = find_contamination(_eval_cases(), train, near_threshold=0.9)
    assert [(h.case_id, h.kind, h.train_index) for h in hits] == [
        ("case-1", "near", 30),
        ("case-3", "exact", 5),
        ("case-7", "exact", 17),
    ]
    near = hits[0]
    assert 0.9 <= near.score < 1.0
    assert hits[1].score == 1.0


def test_contamination_threshold_is_respected() -> None:
    train = train_texts_from_jsonl(_training_file())
    strict = find_contamination(_eval_cases(), train, near_threshold=1.0)
    assert [h.case_id for h in strict] == ["case-3", "case-7"]
    loose = find_contamination(_eval_cases(), train, near_threshold=0.5)
    assert "case-0" in {h.case_id for h in loose}


def test_contamination_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    train = train_texts_from_jsonl(_training_file())
    whole = find_contamination(_eval_cases(), train, near_threshold=0.8)
    monkeypatch.setattr(cases_mod, "_BLOCK_CELLS", 7)  # blocks of a single training text
    assert find_contamination(_eval_cases(), train, near_threshold=0.8) == whole


def test_contamination_at_scale_reports_planted_duplicates() -> None:
    rng = random.Random(7)
    vocab = [a + b + c for a in "bdfgklmnprst" for b in "aeiou" for c in "nrstl"]

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(10))

    evals = [EvalCase(id=f"e{i}", input=sentence()) for i in range(800)]
    train = [sentence() for _ in range(3000)]
    train[1234] = case_text(evals[321]).upper()
    words = case_text(evals[555]).split()
    words[4] = words[4][:-1] + "x"  # one letter changed
    train[2999] = " ".join(words)
    hits = find_contamination(evals, train)
    assert [(h.case_id, h.kind, h.train_index) for h in hits] == [
        ("e321", "exact", 1234),
        ("e555", "near", 2999),
    ]


def test_contamination_within_counts_distinct_cases() -> None:
    hits = [
        ContaminationHit(case_id="a", kind="exact", score=1.0, train_index=1),
        ContaminationHit(case_id="b", kind="near", score=0.95, train_index=2),
    ]
    assert contamination_within([], 10, 0.0)
    assert not contamination_within(hits, 10, 0.0)
    assert contamination_within(hits, 10, 0.2)
    assert not contamination_within(hits, 10, 0.19)


def test_bad_threshold_is_rejected() -> None:
    with pytest.raises(EvalInputError, match="near_threshold"):
        find_contamination(_eval_cases(), ["x"], near_threshold=0.0)
