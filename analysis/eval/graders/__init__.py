"""Graders of the offline gate: a registry of built-ins plus ``abgate.graders`` plugins.

See `analysis.eval.graders.base` for the two grader shapes (local and model graders) and
`analysis.eval.graders.registry` for how a suite's ``grader`` mapping becomes a grader.
"""

from analysis.eval.graders.base import (
    Embedder,
    Grader,
    LocalGrader,
    ModelGrader,
    is_model_grader,
)
from analysis.eval.graders.judge import VERDICT_SCHEMA, JudgeConfig
from analysis.eval.graders.registry import (
    BUILTIN_TYPES,
    ENTRY_POINT_GROUP,
    GraderFactory,
    build_grader,
    check_cases,
    effective_config,
)
from analysis.eval.graders.similarity import load_default_embedder

__all__ = [
    "BUILTIN_TYPES",
    "ENTRY_POINT_GROUP",
    "VERDICT_SCHEMA",
    "Embedder",
    "Grader",
    "GraderFactory",
    "JudgeConfig",
    "LocalGrader",
    "ModelGrader",
    "build_grader",
    "check_cases",
    "effective_config",
    "is_model_grader",
    "load_default_embedder",
]
