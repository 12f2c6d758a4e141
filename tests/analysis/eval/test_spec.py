"""The eval spec: parsing, errors that name the key, the grader config hash."""

from __future__ import annotations

import pytest

from analysis.eval.spec import EvalSpec, Thresholds, grader_config_hash, parse_spec
from analysis.eval.types import EvalInputError

SPEC = """\
name: support
params: {temperature: 0.0, max_tokens: 256, seed: 0}
suites:
  - name: target task
    role: target
    cases: support_heldout.jsonl
    grader: {type: exact, normalise: [case, whitespace, punctuation]}
    thresholds: {win_margin: 0.0, forgetting_points: 5.0, watch_points: 1.0, alpha: 0.05}
  - name: tone
    cases: tone.jsonl
    grader: {type: judge, rubric: "Polite and concise."}
contamination: {near_threshold: 0.9, max_fraction: 0.0}
judge: {base_url: "http://judge:8000/v1", model: judge-7b, temperature: 0, seed: 0}
"""


def test_the_documented_spec_parses() -> None:
    spec = parse_spec(SPEC, "eval.yaml")
    assert isinstance(spec, EvalSpec)
    assert spec.name == "support"
    assert spec.params.max_tokens == 256 and spec.params.seed == 0
    target, tone = spec.suites
    assert (target.name, target.role, target.cases) == (
        "target task",
        "target",
        "support_heldout.jsonl",
    )
    assert target.grader == {"type": "exact", "normalise": ["case", "whitespace", "punctuation"]}
    assert tone.role == "regression"  # the default
    assert tone.thresholds == Thresholds()
    assert spec.contamination.near_threshold == 0.9
    assert spec.judge is not None and spec.judge.model == "judge-7b"


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("name: support\n", "name: support\nowner: me\n", "eval.yaml: owner: unknown key"),
        ("alpha: 0.05", "alpah: 0.05", "suites[0].thresholds.alpah: unknown key"),
        ("alpha: 0.05", "alpha: 1.5", "suites[0].thresholds.alpha: Input should be less than 1"),
        (
            "role: target",
            "role: champion",
            "suites[0].role: Input should be 'target' or 'regression'",
        ),
        ("    cases: tone.jsonl\n", "", "suites[1].cases: Field required"),
        ("max_tokens: 256", "max_token: 256", "params.max_token: unknown key"),
        ("near_threshold: 0.9", "near_threshold: 0", "contamination.near_threshold"),
        ("model: judge-7b,", "modle: judge-7b,", "judge.modle: unknown key"),
        (
            "normalise: [case",
            "normalize: [case",
            "suites[0].grader (target task): exact grader: unknown key 'normalize'",
        ),
        ("name: tone", "name: target task", "duplicate suite name 'target task'"),
        (
            "type: judge, rubric",
            "type: judge, rubrik",
            "suites[1].grader (tone): judge grader: key 'rubric': Field required; "
            "unknown key 'rubrik'",
        ),
    ],
)
def test_errors_name_the_offending_key(old: str, new: str, needle: str) -> None:
    assert old in SPEC
    with pytest.raises(EvalInputError) as info:
        parse_spec(SPEC.replace(old, new, 1), "eval.yaml")
    assert needle in str(info.value)


def test_judge_grader_needs_the_judge_section() -> None:
    without = SPEC.split("judge: {base_url")[0]
    with pytest.raises(
        EvalInputError, match=r"suites\[1\]\.grader \(tone\): judge grader: the spec has no 'judge'"
    ):
        parse_spec(without, "eval.yaml")


def test_yaml_problems_name_the_line() -> None:
    with pytest.raises(
        EvalInputError, match=r"eval\.yaml:3: invalid YAML \(duplicate key 'name'\)"
    ):
        parse_spec("name: a\nsuites: []\nname: b\n", "eval.yaml")
    with pytest.raises(EvalInputError, match=r"eval\.yaml:2: invalid YAML"):
        parse_spec("name: a\nsuites: x: y\n", "eval.yaml")
    with pytest.raises(EvalInputError, match="expected a mapping at the top level"):
        parse_spec("- a\n- b\n", "eval.yaml")
    with pytest.raises(EvalInputError, match="suites: List should have at least 1 item"):
        parse_spec("name: a\nsuites: []\n", "eval.yaml")


def _hash(text: str) -> str:
    return grader_config_hash(parse_spec(text, "eval.yaml"))


def test_grader_config_hash_ignores_where_the_judge_runs_and_suite_order() -> None:
    base = _hash(SPEC)
    assert len(base) == 64
    assert _hash(SPEC.replace("http://judge:8000/v1", "https://elsewhere/v1")) == base
    assert (
        _hash(SPEC.replace("temperature: 0, seed: 0}", "temperature: 0, seed: 0, api_key_env: K}"))
        == base
    )
    assert _hash(SPEC.replace("support_heldout.jsonl", "moved/heldout.jsonl")) == base
    # the models' sampling parameters change what is measured: they are in
    assert _hash(SPEC.replace("max_tokens: 256", "max_tokens: 512")) != base
    # writing a default out changes nothing
    assert (
        _hash(
            SPEC.replace(
                'rubric: "Polite and concise."', 'rubric: "Polite and concise.", pass_score: 4'
            )
        )
        == base
    )
    head, suites = SPEC.split("suites:\n")
    first, second = suites.split("  - name: tone")
    second, tail = second.split("contamination:")
    swapped = f"{head}suites:\n  - name: tone{second}{first}contamination:{tail}"
    assert parse_spec(swapped, "eval.yaml").suites[0].name == "tone"
    assert _hash(swapped) == base


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Polite and concise.", "Polite."),
        ("model: judge-7b", "model: judge-70b"),
        ("temperature: 0, seed: 0}", "temperature: 0, seed: 1}"),
        ("watch_points: 1.0", "watch_points: 2.0"),
        ("[case, whitespace, punctuation]", "[case, whitespace]"),
    ],
)
def test_grader_config_hash_changes_with_how_results_are_judged(old: str, new: str) -> None:
    assert old in SPEC
    assert _hash(SPEC.replace(old, new, 1)) != _hash(SPEC)
