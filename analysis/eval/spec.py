"""The eval spec (YAML) of ``abgate eval``: which suites, how they are graded, what counts.

::

    name: support
    params: {temperature: 0.0, max_tokens: 256, seed: 0}   # sent with every model call
    suites:
      - name: target task
        role: target              # target (must win) | regression (must not forget; default)
        cases: support_heldout.jsonl   # relative to the spec file; the caller reads it
        grader: {type: exact, normalise: [case, whitespace, punctuation]}
        thresholds: {win_margin: 0.0, forgetting_points: 5.0, watch_points: 1.0, alpha: 0.05}
    contamination: {near_threshold: 0.9, max_fraction: 0.0, train: train.jsonl}
    judge: {model: judge-model, base_url: http://..., temperature: 0, seed: 0}

`parse_spec` takes the text (the caller reads the file) and validates everything, the grader
configs included, so a typo fails before any model is called; unknown keys are errors and
each message names the key's path (``suites[1].grader: exact grader: unknown key ...``).
Suite names must be unique. Judge graders need the ``judge`` section.

`grader_config_hash` identifies how results were judged (see its docstring), next to the
cases' `analysis.eval.cases.fingerprint` that identifies what was judged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from analysis.eval.graders import (
    Embedder,
    GraderFactory,
    JudgeConfig,
    build_grader,
    effective_config,
)
from analysis.eval.types import EvalInputError

__all__ = [
    "ContaminationSpec",
    "EvalSpec",
    "GenerationParams",
    "SuiteSpec",
    "Thresholds",
    "grader_config_hash",
    "parse_spec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerationParams(_Strict):
    """Sampling parameters sent with every call to the base and candidate models."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, gt=0)
    seed: int | None = 0
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None


class Thresholds(_Strict):
    """What a suite's delta must show (in percentage points, candidate − base); see
    `analysis.eval.verdict` for the rules. ``min_n``: below it the suite gets a small-sample
    warning. ``max_failed_fraction``: above this share of cases with a failed model call
    (either model), the suite is *incomplete* and the gate fails."""

    win_margin: float = 0.0
    forgetting_points: float = Field(default=5.0, ge=0.0)
    watch_points: float = Field(default=1.0, ge=0.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_n: int = Field(default=30, ge=1)
    max_failed_fraction: float = Field(default=0.02, ge=0.0, le=1.0)


class SuiteSpec(_Strict):
    name: str = Field(min_length=1)
    role: Literal["target", "regression"] = "regression"
    cases: str = Field(min_length=1, description="JSONL path, relative to the spec file")
    grader: dict[str, Any]
    thresholds: Thresholds = Field(default_factory=Thresholds)


class ContaminationSpec(_Strict):
    """``near_threshold``: fuzz.ratio similarity (0-1) from which a training text counts as a
    near-duplicate; ``max_fraction``: share of contaminated cases the gate tolerates;
    ``train``: the training JSONL (relative to the spec), when the spec names it."""

    near_threshold: float = Field(default=0.9, gt=0.0, le=1.0)
    max_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    train: str | None = None


class EvalSpec(_Strict):
    name: str = Field(min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    suites: list[SuiteSpec] = Field(min_length=1)
    contamination: ContaminationSpec = Field(default_factory=ContaminationSpec)
    judge: JudgeConfig | None = None

    @model_validator(mode="after")
    def _unique_suite_names(self) -> EvalSpec:
        seen: set[str] = set()
        for suite in self.suites:
            if suite.name in seen:
                raise ValueError(f"duplicate suite name {suite.name!r}")
            seen.add(suite.name)
        return self


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def parse_spec(
    text: str,
    source: str,
    *,
    embedder: Embedder | None = None,
    plugins: dict[str, GraderFactory] | None = None,
) -> EvalSpec:
    """Parse and validate an eval spec. Raises `EvalInputError` naming ``source`` and the
    offending key's path (or the YAML line). ``plugins`` replaces the entry-point lookup of
    custom graders (for tests)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise EvalInputError(f"{source}{where}: invalid YAML ({problem})", source=source) from exc
    if not isinstance(data, dict):
        raise EvalInputError(f"{source}: expected a mapping at the top level", source=source)
    try:
        spec = EvalSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_loc(tuple(err['loc']))}: {msg}")
        raise EvalInputError(f"{source}: " + "; ".join(problems), source=source) from exc
    for i, suite in enumerate(spec.suites):
        try:
            build_grader(suite.grader, judge=spec.judge, embedder=embedder, plugins=plugins)
        except EvalInputError as exc:
            raise EvalInputError(
                f"{source}: suites[{i}].grader ({suite.name}): {exc}", source=source
            ) from exc
    return spec


def grader_config_hash(
    spec: EvalSpec,
    *,
    embedder: Embedder | None = None,
    plugins: dict[str, GraderFactory] | None = None,
) -> str:
    """sha256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of::

        {"suites": [{"name", "role", "grader": <effective config>, "thresholds"}, ...
                    sorted by name],
         "judge": {"model", "temperature", "seed", "max_tokens"} | null,
         "params": <the models' sampling parameters>}

    The effective grader config has every default filled in (a rubric, a normalisation list,
    a threshold), so writing a default out does not change the hash and changing a default
    in a new abgate version does. Left out: the judge's ``base_url`` and ``api_key_env``
    (where the judge runs, not how it judges), the cases' paths (their content is the
    fingerprint's business) and ``contamination``. ``params`` (how the compared models are
    sampled: temperature, max_tokens...) are in: changing them after seeing a result changes
    what was measured.
    """
    suites = []
    for suite in sorted(spec.suites, key=lambda s: s.name):
        grader = build_grader(suite.grader, judge=spec.judge, embedder=embedder, plugins=plugins)
        suites.append(
            {
                "name": suite.name,
                "role": suite.role,
                "grader": effective_config(grader, suite.grader),
                "thresholds": suite.thresholds.model_dump(mode="json"),
            }
        )
    payload = {
        "suites": suites,
        "judge": spec.judge.hashed() if spec.judge else None,
        "params": spec.params.model_dump(mode="json"),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
