"""The offline gate's pure core: cases, spec, graders, paired statistics, verdicts, report.

End to end (the caller reads files, calls models and prints)::

    spec = parse_spec(spec_text, "eval.yaml")
    for suite in spec.suites:
        cases = parse_cases(read(suite.cases), suite.cases)
        grader = build_grader(suite.grader, judge=spec.judge)
        check_cases(grader, cases, source=suite.cases)
        # ... the runner calls both models; a model grader also needs one judge call per
        # output: grader.request(case, text) -> body; grader.parse(case, text, answer_text)
        base_grades = [grader.grade(c, o.text) if o.error is None else None ...]
        result = judge_suite(suite.name, suite.role, suite.thresholds, grader.kind,
                             base_grades, cand_grades, base_outputs=..., cand_outputs=...)
    hits = find_contamination(all_cases, train_texts_from_jsonl(train_text),
                              spec.contamination.near_threshold)
    verdict = gate(results, contamination_ok=contamination_within(hits, n, max_fraction),
                   fingerprint_ok=pinned is None or pinned == fingerprint(all_cases))
    report = EvalReport(..., fingerprint=fingerprint(all_cases),
                        grader_config_hash=grader_config_hash(spec), suites=results,
                        gate=verdict, contamination=hits)
"""

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
from analysis.eval.graders import (
    Grader,
    JudgeConfig,
    LocalGrader,
    ModelGrader,
    build_grader,
    check_cases,
    is_model_grader,
)
from analysis.eval.paired import (
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap,
    paired_bootstrap_test,
    paired_t,
)
from analysis.eval.report import (
    EvalReport,
    TableRow,
    render_html,
    render_markdown,
    render_table_rows,
    table_headers,
)
from analysis.eval.spec import EvalSpec, SuiteSpec, Thresholds, grader_config_hash, parse_spec
from analysis.eval.types import (
    CaseOutput,
    ContaminationHit,
    EvalCase,
    EvalInputError,
    Grade,
    GraderKind,
    Message,
)
from analysis.eval.verdict import CaseRow, GateResult, SuiteResult, gate, judge_suite

__all__ = [
    "CaseOutput",
    "CaseRow",
    "ContaminationHit",
    "EvalCase",
    "EvalInputError",
    "EvalReport",
    "EvalSpec",
    "GateResult",
    "Grade",
    "Grader",
    "GraderKind",
    "JudgeConfig",
    "LocalGrader",
    "Message",
    "ModelGrader",
    "SuiteResult",
    "SuiteSpec",
    "TableRow",
    "Thresholds",
    "build_grader",
    "case_hash",
    "case_text",
    "check_cases",
    "contamination_within",
    "find_contamination",
    "fingerprint",
    "gate",
    "grader_config_hash",
    "is_model_grader",
    "judge_suite",
    "mcnemar_exact",
    "minimum_detectable_effect",
    "normalise_text",
    "paired_bootstrap",
    "paired_bootstrap_test",
    "paired_t",
    "parse_cases",
    "parse_spec",
    "render_html",
    "render_markdown",
    "render_table_rows",
    "table_headers",
    "train_texts_from_jsonl",
]
