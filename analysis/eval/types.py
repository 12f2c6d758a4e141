"""Value objects of the offline gate, shared by graders, statistics, verdicts and the runner.

A leaf module: it imports nothing else of the project. `router` (the CLI) and `serving` (batch
generation) exchange these with `analysis`, never the other way round.

An eval *case* is one line of a suite's JSONL file::

    {"id": "refund-7", "input": [{"role": "user", "content": "..."}], "expected": "...",
     "reference": "...", "metadata": {...}, <grader-specific keys>}

``input`` is a list of chat messages or a plain prompt string. ``expected`` is what the grader
compares against (its meaning depends on the grader). ``reference`` is an optional known-good
answer: shipped suites carry one for every case so their graders are tested on it. Any other
top-level key is kept in ``fields`` for the grader (``schema``, ``tolerance``, ``constraints``...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CaseOutput",
    "ContaminationHit",
    "EvalCase",
    "EvalInputError",
    "Grade",
    "GraderKind",
    "Message",
]

GraderKind = Literal["pass_fail", "score"]


class EvalInputError(ValueError):
    """Bad input to the offline gate: a case file, a training file, an eval spec or a grader's
    configuration. The message names the source (file name or grader), the line or key where
    known, and the problem, so the CLI can print it as is (``str(exc)``) and exit.

    ``source`` and ``line`` are kept as attributes for callers that want them apart.
    """

    def __init__(self, message: str, *, source: str = "", line: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.line = line


class Message(BaseModel):
    """One chat message of a case's input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class EvalCase(BaseModel):
    """One held-out case. ``input`` is chat messages or a prompt string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    input: list[Message] | str
    expected: Any = None
    reference: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    fields: dict[str, Any] = Field(default_factory=dict)


class Grade(BaseModel):
    """A grader's judgement of one output.

    ``score`` is in [0, 1]; pass/fail graders give 1.0 or 0.0 and ``passed`` matches it.
    ``detail`` says why, in a few words, for the report.
    """

    model_config = ConfigDict(frozen=True)

    passed: bool
    score: float = Field(ge=0.0, le=1.0)
    detail: str = ""


class CaseOutput(BaseModel):
    """What one model answered to one case (``error`` set when every attempt failed)."""

    model_config = ConfigDict(frozen=True)

    case_id: str
    model: str
    text: str = ""
    error: str | None = None
    cached: bool = False


class ContaminationHit(BaseModel):
    """An eval case whose input also appears in the training data.

    ``kind`` is "exact" when the normalised texts are equal and "near" when their similarity
    (rapidfuzz ``fuzz.ratio`` on normalised text, scaled to [0, 1]) reaches the threshold.
    ``train_index`` is the 0-based index into the training texts given to the check (with
    ``train_texts_from_jsonl`` that is the training file's line number minus one).
    """

    model_config = ConfigDict(frozen=True)

    case_id: str
    kind: Literal["exact", "near"]
    score: float = Field(ge=0.0, le=1.0)
    train_index: int = Field(ge=0)
