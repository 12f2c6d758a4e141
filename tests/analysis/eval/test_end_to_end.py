"""The whole pure path as the CLI drives it: spec, cases, graders, verdicts, gate, report."""

from __future__ import annotations

import datetime as dt
import json
import random

from analysis.eval import (
    CaseOutput,
    EvalReport,
    Grade,
    build_grader,
    check_cases,
    contamination_within,
    find_contamination,
    fingerprint,
    gate,
    grader_config_hash,
    is_model_grader,
    judge_suite,
    parse_cases,
    parse_spec,
    render_markdown,
    render_table_rows,
    train_texts_from_jsonl,
)

SPEC = """\
name: capitals
suites:
  - name: target task
    role: target
    cases: capitals.jsonl
    grader: {type: exact, normalise: [case, whitespace, punctuation]}
  - name: politeness
    cases: polite.jsonl
    grader: {type: judge, rubric: "The reply is polite."}
contamination: {near_threshold: 0.9, max_fraction: 0.0}
judge: {model: judge-7b, base_url: "http://judge/v1"}
"""

_RNG = random.Random(3)
_SYLLABLES = ["ka", "lo", "mi", "re", "su", "ta", "vo", "ne", "pi", "dra", "gu", "sho"]


def _name() -> str:
    return "".join(_RNG.choice(_SYLLABLES) for _ in range(4)).title()


# Distinct names: templated prompts that differ in one character are near-duplicates of
# each other under fuzz.ratio, which is not what this test is about.
CITIES = [(_name(), _name()) for _ in range(60)]


def _files() -> dict[str, str]:
    capitals = "\n".join(
        json.dumps({"id": f"cap-{i}", "input": f"What is the capital of {c}?", "expected": city})
        for i, (c, city) in enumerate(CITIES)
    )
    polite = "\n".join(
        json.dumps(
            {"id": f"pol-{i}", "input": [{"role": "user", "content": f"Help me with task {i}"}]}
        )
        for i in range(40)
    )
    return {"capitals.jsonl": capitals, "polite.jsonl": polite}


def _base_answer(case_id: str, expected: str) -> str:
    i = int(case_id.split("-")[1])
    if case_id.startswith("cap"):
        return expected if i % 2 == 0 else "I am not sure."
    return "Sure, happy to help."


def _cand_answer(case_id: str, expected: str) -> str:
    i = int(case_id.split("-")[1])
    if case_id.startswith("cap"):
        return f"{expected}." if i % 10 != 1 else "No idea"
    return "Sure, happy to help." if i != 3 else "Figure it out yourself."


def _fake_judge(body: dict[str, object]) -> str:
    prompt = json.dumps(body["messages"])
    rude = "Figure it out" in prompt
    return json.dumps({"reason": "tone", "score": 1 if rude else 5, "passed": not rude})


def test_end_to_end() -> None:
    files = _files()
    spec = parse_spec(SPEC, "eval.yaml")
    results = []
    all_cases = []
    for suite in spec.suites:
        cases = parse_cases(files[suite.cases], suite.cases)
        all_cases += cases
        grader = build_grader(suite.grader, judge=spec.judge)
        check_cases(grader, cases, source=suite.cases)
        per_model: list[list[Grade | None]] = []
        outputs: list[list[CaseOutput]] = []
        for model, answer in (("base", _base_answer), ("cand", _cand_answer)):
            outs = [
                CaseOutput(case_id=c.id, model=model, text=answer(c.id, str(c.expected)))
                for c in cases
            ]
            grades: list[Grade | None] = []
            for c, o in zip(cases, outs, strict=True):
                if is_model_grader(grader):
                    grades.append(grader.parse(c, o.text, _fake_judge(grader.request(c, o.text))))
                else:
                    grades.append(grader.grade(c, o.text))
            per_model.append(grades)
            outputs.append(outs)
        results.append(
            judge_suite(
                suite.name,
                suite.role,
                suite.thresholds,
                grader.kind,
                per_model[0],
                per_model[1],
                base_outputs=outputs[0],
                cand_outputs=outputs[1],
            )
        )
    leaked = f"what is the capital of {CITIES[7][0].upper()}"
    train = train_texts_from_jsonl(json.dumps({"prompt": leaked}))
    hits = find_contamination(all_cases, train, spec.contamination.near_threshold)
    assert [h.case_id for h in hits] == ["cap-7"]
    ok = contamination_within(hits, len(all_cases), spec.contamination.max_fraction)
    verdict = gate(results, contamination_ok=ok)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    report = EvalReport(
        spec_name=spec.name,
        base_model="base",
        candidate_model="cand",
        started_at=start,
        finished_at=start,
        fingerprint=fingerprint(all_cases),
        grader_config_hash=grader_config_hash(spec),
        suites=results,
        gate=verdict,
        contamination=hits,
    )
    rows = render_table_rows(report)
    assert [(r.suite, r.base, r.candidate, r.verdict) for r in rows] == [
        ("target task (60 held-out)", "50.0 %", "90.0 %", "win"),
        ("politeness (40 cases)", "100.0 %", "97.5 %", "watch"),
    ]
    assert not verdict.passed
    assert verdict.reasons == [
        "contamination: eval cases appear in the training data beyond the limit"
    ]
    assert "| politeness (40 cases) | 100.0 % | 97.5 % | -2.5 [" in render_markdown(report)
    assert EvalReport.from_json(report.to_json()) == report
