"""The offline gate's runner: spec and cases in, `EvalReport` out (docs/evaluation.md).

Composition only: the suites, graders, statistics and verdicts are `analysis.eval`'s (pure); the
model calls are `serving.generate`'s. Steps:

1. read the spec and every suite's cases, build the graders and check the cases against them
   (a typo fails here, before any model call); ``--regression`` adds the shipped suites, and
   without a spec they are the whole run (has the fine-tune forgotten anything?);
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
from offline.files import write_atomically
from serving.generate import BatchGenerator, GenerationRequest, GenerationResult, OutputCache

__all__ = [
    "EndpointUnavailable", "EvalOptions", "Suite", "freeze", "frozen_path", "load_suites",
    "run_eval",
]  # fmt: skip


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
    fresh: bool = False  # ignore (and replace) the run directory's cached outputs
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


def regression_only_spec() -> EvalSpec:
    """The spec of a run of the shipped regression suites alone: default sampling, no suite of
    its own. Built without validation, which asks a written spec for at least one suite."""
    return EvalSpec.model_construct(name="regression", suites=[])


def load_suites(spec_path: Path | None, regression: bool) -> tuple[EvalSpec, list[Suite]]:
    """The spec and its suites; without ``spec_path``, the shipped regression suites alone."""
    if spec_path is not None:
        spec = parse_spec(_read(spec_path, "the spec"), str(spec_path))
    elif regression:
        spec = regression_only_spec()
    else:
        raise EvalInputError("give a spec, or ask for the regression suites")
    suites: list[Suite] = []
    for s in spec.suites:  # only a spec read from a file has suites of its own
        path = (spec_path or Path()).parent / s.cases
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
    write_atomically(target, json.dumps(doc, indent=2) + "\n")
    return doc


def _body(model: str, case: EvalCase, spec: EvalSpec) -> tuple[str, dict[str, Any]]:
    params = spec.params.model_dump(exclude_none=True)
    if isinstance(case.input, str):
        return "completions", {"model": model, "prompt": case.input, **params}
    messages = [m.model_dump() for m in case.input]
    return "chat/completions", {"model": model, "messages": messages, **params}


def _key(scope: str, endpoint: str, body: dict[str, Any]) -> str:
    """The cache key: where it runs (URL and, for models, what the name stood for), the
    endpoint and the exact body (model, input, sampling parameters)."""
    canonical = json.dumps([scope, endpoint, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request(model: str, case: EvalCase, spec: EvalSpec, scope: str) -> GenerationRequest:
    endpoint, body = _body(model, case, spec)
    return GenerationRequest(_key(scope, endpoint, body), endpoint, body)  # type: ignore[arg-type]


def _generator(url: str, key: str | None, opts: EvalOptions, cache: OutputCache) -> BatchGenerator:
    return BatchGenerator(
        url, api_key=key, concurrency=opts.concurrency, retries=opts.retries,
        timeout_seconds=opts.timeout, cache=cache,
    )  # fmt: skip


class EndpointUnavailable(Exception):
    """Every call to one endpoint failed: nothing can be compared."""


async def _generate(
    suites: list[Suite], spec: EvalSpec, opts: EvalOptions, cache: OutputCache
) -> dict[tuple[str, str, str], CaseOutput]:
    """Every case's output from both models, by (suite, case id, "base" or "candidate")."""
    plans: list[tuple[str, str, str, dict[tuple[str, str], GenerationRequest]]] = []
    sides = (("base", opts.base, opts.base_url), ("candidate", opts.candidate, opts.candidate_url))
    for side, model, url in sides:
        url = url or opts.base_url
        async with _generator(url, opts.api_key, opts, cache) as gen:
            root = (await gen.model_roots()).get(model, "")
        scope = f"{url.rstrip('/')}|{model}|{root}"
        reqs = {(s.name, c.id): _request(model, c, spec, scope) for s in suites for c in s.cases}
        plans.append((side, model, url, reqs))
    if opts.progress:
        opts.progress("generating", sum(len(r) for *_, r in plans))
    outputs: dict[tuple[str, str, str], CaseOutput] = {}
    for side, model, url, reqs in plans:
        async with _generator(url, opts.api_key, opts, cache) as gen:
            done = await gen.run(reqs.values(), lambda _: opts.advance and opts.advance())
        if done and all(r.error is not None for r in done.values()):
            first = next(iter(done.values())).error
            raise EndpointUnavailable(f"every call to {model!r} at {url} failed ({first})")
        for (suite, case_id), req in reqs.items():
            r = done[req.key]
            outputs[(suite, case_id, side)] = CaseOutput(
                case_id=case_id, model=model, text=r.text, error=r.error, cached=r.cached
            )
    return outputs


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
            for side in ("base", "candidate"):
                out = outputs[(s.name, c.id, side)]
                if out.error is None:
                    body = s.grader.request(c, out.text)
                    key = _key(_judge_scope(spec, opts), "chat/completions", body)
                    requests.append(GenerationRequest(key, "chat/completions", body))
    if not requests:
        return {}
    if opts.progress:
        opts.progress("judging", len(requests))
    url = _judge_url(spec, opts)
    async with _generator(url, opts.judge_api_key or opts.api_key, opts, cache) as gen:
        done = await gen.run(requests, lambda _: opts.advance and opts.advance())
    if all(r.error is not None for r in done.values()):
        first = next(iter(done.values())).error
        raise EndpointUnavailable(f"every call to the judge at {url} failed ({first})")
    return done


def _judge_url(spec: EvalSpec, opts: EvalOptions) -> str:
    return opts.judge_url or (spec.judge.base_url if spec.judge else None) or opts.base_url


def _judge_scope(spec: EvalSpec, opts: EvalOptions) -> str:
    return "judge|" + _judge_url(spec, opts).rstrip("/")


def _grade(
    s: Suite, case: EvalCase, out: CaseOutput, judged: dict[str, GenerationResult], scope: str
) -> Grade | None:
    if out.error is not None:
        return None
    grader = s.grader
    if is_model_grader(grader):
        body = grader.request(case, out.text)
        verdict = judged.get(_key(scope, "chat/completions", body))
        if verdict is None or verdict.error is not None:
            return None
        return grader.parse(case, out.text, verdict.text)
    return grader.grade(case, out.text)


async def run_eval(spec_path: Path | None, opts: EvalOptions) -> EvalReport:
    """Run the whole gate; raises `EvalInputError` for bad input (nothing is called then).
    Without ``spec_path`` (and with ``opts.regression``) the shipped regression suites alone
    are run: the gate passes unless one of them shows forgetting or is incomplete."""
    started = dt.datetime.now(dt.UTC)
    spec, suites = load_suites(spec_path, opts.regression)
    own = _spec_cases(suites)
    fp, ghash = fingerprint(own), grader_config_hash(spec)
    extra_reasons: list[str] = []
    pinned = frozen_path(spec_path) if spec_path is not None else None
    fingerprint_ok = True
    if pinned is not None and pinned.exists():
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
    train = opts.train
    if train is None and spec_path is not None and spec.contamination.train:
        train = spec_path.parent / spec.contamination.train
    hits = []
    if train is not None:
        texts = train_texts_from_jsonl(_read(train, "the training data"), str(train))
        hits = find_contamination(own, texts, spec.contamination.near_threshold)
    contamination_ok = contamination_within(hits, len(own), spec.contamination.max_fraction)

    run_dir = opts.run_dir
    cache_file = run_dir / "outputs.jsonl" if run_dir else None
    if opts.fresh and cache_file is not None:
        cache_file.unlink(missing_ok=True)
    cache = OutputCache(cache_file)
    outputs = await _generate(suites, spec, opts, cache)
    judged = await _judge(suites, outputs, spec, opts, cache)
    scope = _judge_scope(spec, opts)

    results: list[SuiteResult] = []
    for s in suites:
        base_out = [outputs[(s.name, c.id, "base")] for c in s.cases]
        cand_out = [outputs[(s.name, c.id, "candidate")] for c in s.cases]
        base_grades = [
            _grade(s, c, o, judged, scope) for c, o in zip(s.cases, base_out, strict=True)
        ]
        cand_grades = [
            _grade(s, c, o, judged, scope) for c, o in zip(s.cases, cand_out, strict=True)
        ]
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
    warnings = list(opts.warnings)
    failed = [o for o in outputs.values() if o.error is not None]
    if failed:
        warnings.append(
            f"{len(failed)} model calls failed after retries (first: {failed[0].error})"
        )
    judge_failed = [r for r in judged.values() if r.error is not None]
    if judge_failed:
        warnings.append(
            f"{len(judge_failed)} judge calls failed after retries; those cases are left out "
            f"(first: {judge_failed[0].error})"
        )
    reused = sum(o.cached for o in outputs.values()) + sum(r.cached for r in judged.values())
    if reused:
        warnings.append(
            f"{reused} outputs reused from {cache_file} (same endpoint, model, adapter path, "
            "input and parameters); --fresh calls everything again"
        )
    return EvalReport(
        spec_name=spec.name, base_model=opts.base, candidate_model=opts.candidate,
        started_at=started, finished_at=dt.datetime.now(dt.UTC), fingerprint=fp,
        grader_config_hash=ghash, suites=results, gate=verdict, contamination=hits,
        warnings=warnings,
    )  # fmt: skip
