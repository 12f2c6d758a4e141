"""The offline gate's runner: spec and cases in, `EvalReport` out (docs/evaluation.md).

Composition only: the suites, graders, statistics and verdicts are `analysis.eval`'s (pure); the
model calls are `serving.generate`'s. Steps:

1. read the spec and every suite's cases, build the graders and check the cases against them
   (a typo fails here, before any model call); ``--regression`` adds the shipped suites;
2. fingerprint the spec's cases and compare with the frozen fingerprint when there is one
   (`freeze` writes ``<spec>.frozen.json``); the grader configuration hash must match too;
3. check the cases against the training data (``--train``) for contamination;
4. generate every case with both models (cached in the run directory, so a re-run resumes);
5. grade (LLM-judge suites make a second round of calls), compare, and decide the gate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from analysis.eval.cases import (
    contamination_within,
    find_contamination,
    fingerprint,
    parse_cases,
    train_texts_from_jsonl,
)
from analysis.eval.graders import build_grader, check_cases, is_model_grader
from analysis.eval.graders.base import Grader
from analysis.eval.report import EvalReport
from analysis.eval.spec import EvalSpec, Thresholds, grader_config_hash, parse_spec
from analysis.eval.types import CaseOutput, EvalCase, EvalInputError, Grade
from analysis.eval.verdict import GateResult, SuiteResult, gate, judge_suite
from analysis.suites import REGRESSION_SUITES, load_regression_suite, regression_grader
from serving.generate import BatchGenerator, GenerationRequest, GenerationResult, OutputCache

__all__ = ["EvalOptions", "Suite", "freeze", "frozen_path", "load_suites", "run_eval"]


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    role: Literal["target", "regression"]
    thresholds: Thresholds
    grader: Grader
    cases: list[EvalCase]
    shipped: bool = False


@dataclass(slots=True)
class EvalOptions:
    base_url: str
    base: str
    candidate: str
    candidate_url: str | None = None
    judge_url: str | None = None
    api_key: str | None = None
    judge_api_key: str | None = None
    regression: bool = False
    train: Path | None = None
    run_dir: Path | None = None
    concurrency: int = 8
    retries: int = 4
    timeout: float = 120.0
    progress: Callable[[str, int], None] | None = None  # (phase, total) when a phase starts
    advance: Callable[[], None] | None = None  # one call done
    warnings: list[str] = field(default_factory=list)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalInputError(
            f"cannot read {what} {path}: {exc.strerror}", source=str(path)
        ) from None


def load_suites(spec_path: Path, regression: bool) -> tuple[EvalSpec, list[Suite]]:
    spec = parse_spec(_read(spec_path, "the spec"), str(spec_path))
    suites: list[Suite] = []
    for s in spec.suites:
        path = spec_path.parent / s.cases
        cases = parse_cases(_read(path, f"the cases of suite {s.name!r}"), str(path))
        grader = build_grader(s.grader, judge=spec.judge)
        check_cases(grader, cases, source=str(path))
        suites.append(Suite(s.name, s.role, s.thresholds, grader, cases))
    if regression:
        names = {s.name for s in suites}
        for shipped in REGRESSION_SUITES:
            if shipped.name in names:
                raise EvalInputError(
                    f"suite name {shipped.name!r} is taken by the shipped regression suite"
                )
            label, cases = load_regression_suite(shipped.key)
            grader = regression_grader(shipped.key)
            suites.append(Suite(label, "regression", Thresholds(), grader, cases, shipped=True))
    return spec, suites


def frozen_path(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.stem + ".frozen.json")


def _spec_cases(suites: list[Suite]) -> list[EvalCase]:
    return [c for s in suites if not s.shipped for c in s.cases]


def freeze(spec_path: Path) -> dict[str, Any]:
    """Pin the spec's cases and grader configuration; `run_eval` then refuses any change."""
    spec, suites = load_suites(spec_path, regression=False)
    doc = {
        "spec": spec.name,
        "fingerprint": fingerprint(_spec_cases(suites)),
        "grader_config_hash": grader_config_hash(spec),
        "suites": {
            s.name: {"n": len(s.cases), "fingerprint": fingerprint(s.cases)} for s in suites
        },
        "frozen_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    target = frozen_path(spec_path)
    tmp = target.with_name("." + target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return doc


def _body(model: str, case: EvalCase, spec: EvalSpec) -> tuple[str, dict[str, Any]]:
    params = spec.params.model_dump(exclude_none=True)
    if isinstance(case.input, str):
        return "completions", {"model": model, "prompt": case.input, **params}
    messages = [m.model_dump() for m in case.input]
    return "chat/completions", {"model": model, "messages": messages, **params}


def _key(endpoint: str, body: dict[str, Any]) -> str:
    canonical = json.dumps([endpoint, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request(model: str, case: EvalCase, spec: EvalSpec) -> GenerationRequest:
    endpoint, body = _body(model, case, spec)
    return GenerationRequest(_key(endpoint, body), endpoint, body)  # type: ignore[arg-type]


def _generator(url: str, key: str | None, opts: EvalOptions, cache: OutputCache) -> BatchGenerator:
    return BatchGenerator(
        url, api_key=key, concurrency=opts.concurrency, retries=opts.retries,
        timeout_seconds=opts.timeout, cache=cache,
    )  # fmt: skip


async def _generate(
    suites: list[Suite], spec: EvalSpec, opts: EvalOptions, cache: OutputCache
) -> dict[str, GenerationResult]:
    jobs: dict[str, list[GenerationRequest]] = {}
    for model, url in ((opts.base, opts.base_url), (opts.candidate, opts.candidate_url)):
        jobs.setdefault(url or opts.base_url, []).extend(
            _request(model, c, spec) for s in suites for c in s.cases
        )
    total = sum(len(v) for v in jobs.values())
    if opts.progress:
        opts.progress("generating", total)
    results: dict[str, GenerationResult] = {}
    for url, requests in jobs.items():
        async with _generator(url, opts.api_key, opts, cache) as gen:
            results.update(await gen.run(requests, lambda _: opts.advance and opts.advance()))
    return results


def _output(model: str, case: EvalCase, result: GenerationResult) -> CaseOutput:
    return CaseOutput(
        case_id=case.id, model=model, text=result.text, error=result.error, cached=result.cached
    )


async def _judge(
    suites: list[Suite],
    outputs: dict[tuple[str, str, str], CaseOutput],
    spec: EvalSpec,
    opts: EvalOptions,
    cache: OutputCache,
) -> dict[str, GenerationResult]:
    requests: list[GenerationRequest] = []
    for s in suites:
        if not is_model_grader(s.grader):
            continue
        for c in s.cases:
            for model in (opts.base, opts.candidate):
                out = outputs[(s.name, c.id, model)]
                if out.error is None:
                    body = s.grader.request(c, out.text)
                    key = _key("judge", body)
                    requests.append(GenerationRequest(key, "chat/completions", body))
    if not requests:
        return {}
    if opts.progress:
        opts.progress("judging", len(requests))
    url = opts.judge_url or (spec.judge.base_url if spec.judge else None) or opts.base_url
    async with _generator(url, opts.judge_api_key or opts.api_key, opts, cache) as gen:
        return await gen.run(requests, lambda _: opts.advance and opts.advance())


def _grade(
    s: Suite, case: EvalCase, out: CaseOutput, judged: dict[str, GenerationResult]
) -> Grade | None:
    if out.error is not None:
        return None
    grader = s.grader
    if is_model_grader(grader):
        body = grader.request(case, out.text)
        verdict = judged.get(_key("judge", body))
        if verdict is None or verdict.error is not None:
            return None
        return grader.parse(case, out.text, verdict.text)
    return grader.grade(case, out.text)


async def run_eval(spec_path: Path, opts: EvalOptions) -> EvalReport:
    """Run the whole gate; raises `EvalInputError` for bad input (nothing is called then)."""
    started = dt.datetime.now(dt.UTC)
    spec, suites = load_suites(spec_path, opts.regression)
    own = _spec_cases(suites)
    fp, ghash = fingerprint(own), grader_config_hash(spec)
    extra_reasons: list[str] = []
    pinned = frozen_path(spec_path)
    fingerprint_ok = True
    if pinned.exists():
        try:
            frozen = json.loads(_read(pinned, "the frozen fingerprint"))
            frozen_fp, frozen_hash = frozen["fingerprint"], frozen["grader_config_hash"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvalInputError(f"{pinned} is not a frozen fingerprint file") from None
        fingerprint_ok = frozen_fp == fp
        if frozen_hash != ghash:
            extra_reasons.append(
                f"grader configuration changed since `abgate eval freeze` ({pinned.name}): "
                f"{frozen_hash[:12]} frozen, {ghash[:12]} now"
            )
    train = opts.train or (
        spec_path.parent / spec.contamination.train if spec.contamination.train else None
    )
    hits = []
    if train is not None:
        texts = train_texts_from_jsonl(_read(train, "the training data"), str(train))
        hits = find_contamination(own, texts, spec.contamination.near_threshold)
    contamination_ok = contamination_within(hits, len(own), spec.contamination.max_fraction)

    run_dir = opts.run_dir
    cache = OutputCache(run_dir / "outputs.jsonl" if run_dir else None)
    generated = await _generate(suites, spec, opts, cache)
    outputs: dict[tuple[str, str, str], CaseOutput] = {}
    for s in suites:
        for c in s.cases:
            for model in (opts.base, opts.candidate):
                outputs[(s.name, c.id, model)] = _output(
                    model, c, generated[_request(model, c, spec).key]
                )
    judged = await _judge(suites, outputs, spec, opts, cache)

    results: list[SuiteResult] = []
    for s in suites:
        base_out = [outputs[(s.name, c.id, opts.base)] for c in s.cases]
        cand_out = [outputs[(s.name, c.id, opts.candidate)] for c in s.cases]
        base_grades = [_grade(s, c, o, judged) for c, o in zip(s.cases, base_out, strict=True)]
        cand_grades = [_grade(s, c, o, judged) for c, o in zip(s.cases, cand_out, strict=True)]
        result = judge_suite(
            s.name, s.role, s.thresholds, s.grader.kind, base_grades, cand_grades,
            base_outputs=base_out, cand_outputs=cand_out,
        )  # fmt: skip
        results.append(result)
    verdict = gate(results, contamination_ok=contamination_ok, fingerprint_ok=fingerprint_ok)
    if extra_reasons:
        verdict = GateResult(
            passed=False, reasons=[*verdict.reasons, *extra_reasons], notes=verdict.notes
        )
    failed_calls = sum(1 for r in generated.values() if r.error is not None)
    warnings = list(opts.warnings)
    if failed_calls:
        first = next(r.error for r in generated.values() if r.error is not None)
        warnings.append(f"{failed_calls} model calls failed after retries (first: {first})")
    return EvalReport(
        spec_name=spec.name, base_model=opts.base, candidate_model=opts.candidate,
        started_at=started, finished_at=dt.datetime.now(dt.UTC), fingerprint=fp,
        grader_config_hash=ghash, suites=results, gate=verdict, contamination=hits,
        warnings=warnings,
    )  # fmt: skip
