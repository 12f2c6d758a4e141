"""Building graders from a suite's ``grader`` mapping: the built-ins, then plugins.

Built-in types: exact, regex, numeric (`.text`), json_schema (`.structured`), similarity,
embedding (`.similarity`) and judge (`.judge`).

Plugins: any other ``type`` is looked up in the Python entry-point group ``abgate.graders``
(a package declares ``[project.entry-points."abgate.graders"] mygrader = "pkg.mod:MyGrader"``).
The entry point is a class or factory called with the suite's grader mapping as written (a
``dict``, ``type`` included); it returns a local grader (``kind`` and ``grade``) or a model
grader (``kind``, ``request`` and ``parse``). Tests pass ``plugins`` instead of installing
entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from analysis.eval.checks import GRADERS as CHECK_GRADERS
from analysis.eval.graders.base import Embedder, Grader, is_model_grader
from analysis.eval.graders.judge import JudgeConfig, JudgeGrader
from analysis.eval.graders.similarity import EmbeddingGrader, SimilarityGrader
from analysis.eval.graders.structured import JsonSchemaGrader
from analysis.eval.graders.text import ExactGrader, NumericGrader, RegexGrader
from analysis.eval.types import EvalCase, EvalInputError

__all__ = [
    "BUILTIN_TYPES",
    "ENTRY_POINT_GROUP",
    "GraderFactory",
    "build_grader",
    "check_cases",
    "effective_config",
]

ENTRY_POINT_GROUP = "abgate.graders"
GraderFactory = Callable[[dict[str, Any]], Any]
BUILTIN_TYPES = (
    "exact", "regex", "numeric", "json_schema", "similarity", "embedding", "judge",
    "final_answer", "instruction", "refusal", "prose",
)  # fmt: skip


def _plugin(type_name: str, plugins: Mapping[str, GraderFactory] | None) -> GraderFactory:
    if plugins is not None:
        if type_name in plugins:
            return plugins[type_name]
        available = sorted(plugins)
    else:
        found = entry_points(group=ENTRY_POINT_GROUP, name=type_name)
        for ep in found:
            try:
                factory: GraderFactory = ep.load()
            except (ImportError, AttributeError) as exc:
                raise EvalInputError(
                    f"grader {type_name!r}: entry point {ep.value!r} failed to load: {exc}",
                    source=type_name,
                ) from exc
            return factory
        available = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    known = ", ".join([*BUILTIN_TYPES, *available])
    raise EvalInputError(
        f"grader: unknown type {type_name!r}; known types: {known} (plugins register in the "
        f"{ENTRY_POINT_GROUP!r} entry-point group)",
        source=type_name,
    )


def _check_plugin(type_name: str, grader: Any) -> Grader:
    kind = getattr(grader, "kind", None)
    if kind not in ("pass_fail", "score"):
        raise EvalInputError(
            f"grader {type_name!r}: 'kind' must be 'pass_fail' or 'score', got {kind!r}",
            source=type_name,
        )
    if not (callable(getattr(grader, "grade", None)) or is_model_grader(grader)):
        raise EvalInputError(
            f"grader {type_name!r}: needs grade(case, output), or request(case, output) and "
            "parse(case, output, judge_text)",
            source=type_name,
        )
    result: Grader = grader
    return result


def build_grader(
    config: Mapping[str, Any],
    *,
    judge: JudgeConfig | None = None,
    embedder: Embedder | None = None,
    plugins: Mapping[str, GraderFactory] | None = None,
) -> Grader:
    """The grader a suite's ``grader`` mapping describes, its config validated.

    ``judge`` is the spec's judge section (required by the judge grader); ``embedder``
    replaces the embedding grader's default model; ``plugins`` replaces the entry-point
    lookup (type -> factory). Raises `EvalInputError` naming the grader and the key.
    """
    if not isinstance(config, Mapping):
        raise EvalInputError("grader: expected a mapping with a 'type' key", source="grader")
    raw = dict(config)
    type_name = raw.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise EvalInputError("grader: missing 'type' (e.g. exact, regex, judge)", source="grader")
    match type_name:
        case "exact":
            return ExactGrader(raw)
        case "regex":
            return RegexGrader(raw)
        case "numeric":
            return NumericGrader(raw)
        case "json_schema":
            return JsonSchemaGrader(raw)
        case "similarity":
            return SimilarityGrader(raw)
        case "embedding":
            return EmbeddingGrader(raw, embedder=embedder)
        case "judge":
            return JudgeGrader(raw, judge)
    if type_name in CHECK_GRADERS:  # the regression suite's checkers (analysis/eval/checks)
        extra = sorted(set(raw) - {"type"})
        if extra:
            raise EvalInputError(
                f"grader {type_name!r}: takes no options, got {', '.join(extra)}", source=type_name
            )
        return CHECK_GRADERS[type_name]()
    factory = _plugin(type_name, plugins)
    try:
        grader = factory(raw)
    except EvalInputError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise EvalInputError(
            f"grader {type_name!r}: invalid config: {exc}", source=type_name
        ) from exc
    return _check_plugin(type_name, grader)


def effective_config(grader: Grader, written: Mapping[str, Any]) -> dict[str, Any]:
    """A grader's configuration with defaults filled in (built-ins), else as written."""
    config = getattr(grader, "config", None)
    if isinstance(config, dict):
        return dict(config)
    return dict(written)


def check_cases(grader: Grader, cases: Sequence[EvalCase], *, source: str = "") -> None:
    """Check every case has what the grader needs (an expected answer, a pattern, a schema...)
    before any model is called, with the grader's ``check_case`` (or ``validate``, as the
    shipped regression graders name it). Raises one `EvalInputError` listing up to five
    problems; other exceptions of a plugin's check are reported the same way."""
    check = getattr(grader, "check_case", None) or getattr(grader, "validate", None)
    if not callable(check):
        return
    problems: list[str] = []
    for case in cases:
        try:
            check(case)
        except (EvalInputError, ValueError, KeyError, TypeError) as exc:
            problems.append(str(exc) if isinstance(exc, EvalInputError) else f"{case.id}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        where = f"{source}: " if source else ""
        raise EvalInputError(where + "; ".join(problems[:5]) + more, source=source)
