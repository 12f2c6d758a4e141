"""The two grader shapes, config validation, and the text helpers the built-in graders share.

A *local* grader judges an output itself: ``grade(case, output) -> Grade``. A *model* grader
(the LLM judge) needs a model call the caller makes: ``request(case, output)`` gives an
OpenAI chat-completions request body, and ``parse(case, output, judge_text)`` turns the judge
model's answer text into a `Grade`. Both have ``kind`` ("pass_fail": the statistics use
``passed``; "score": they use ``score``). Built-in graders also have ``config`` (their
effective configuration, defaults filled in, for `analysis.eval.spec.grader_config_hash`) and
``check_case(case)``, which raises `EvalInputError` when a case lacks what the grader needs.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from analysis.eval.cases import strip_edge_punctuation
from analysis.eval.types import EvalCase, EvalInputError, Grade, GraderKind

if TYPE_CHECKING:  # TypeIs narrows both ways (a LocalGrader in the else branch)
    from typing_extensions import TypeIs

__all__ = [
    "Embedder",
    "Grader",
    "GraderConfig",
    "LocalGrader",
    "ModelGrader",
    "NormaliseOption",
    "apply_normalise",
    "extract",
    "is_model_grader",
    "parse_number",
    "shorten",
    "strip_markdown",
    "validate_config",
    "validate_extract",
]

# Takes texts, returns one embedding vector per text (a 2-D array-like).
Embedder = Callable[[Sequence[str]], Any]
NormaliseOption = Literal["case", "whitespace", "punctuation", "strip_markdown"]


@runtime_checkable
class LocalGrader(Protocol):
    @property
    def kind(self) -> GraderKind: ...

    def grade(self, case: EvalCase, output: str) -> Grade: ...


@runtime_checkable
class ModelGrader(Protocol):
    @property
    def kind(self) -> GraderKind: ...

    def request(self, case: EvalCase, output: str) -> dict[str, Any]: ...

    def parse(self, case: EvalCase, output: str, judge_text: str) -> Grade: ...


Grader = LocalGrader | ModelGrader


def is_model_grader(grader: Grader) -> TypeIs[ModelGrader]:
    """A grader that needs a judge model call (it has ``request`` and ``parse``)."""
    return callable(getattr(grader, "request", None)) and callable(getattr(grader, "parse", None))


class GraderConfig(BaseModel):
    """Base of the built-in graders' configurations: unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str


C = TypeVar("C", bound=GraderConfig)


def validate_config(name: str, model: type[C], raw: dict[str, Any]) -> C:
    """Validate a grader's config; errors name the grader and the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            if err["type"] == "extra_forbidden":
                allowed = sorted(f.alias or n for n, f in model.model_fields.items())
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
            else:
                problems.append(f"key {key!r}: {err['msg']}")
        raise EvalInputError(f"{name} grader: " + "; ".join(problems), source=name) from exc


def shorten(text: str, limit: int = 80) -> str:
    """One line, at most ``limit`` characters, for a grade's detail."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- normalisation ---------------------------------------------------------------------------

_FENCE_LINE = re.compile(r"^\s*(```|~~~).*$", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_STRONG = re.compile(r"(\*\*|__)(.+?)\1", re.DOTALL)
_EMPHASIS = re.compile(
    r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)"
)
_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_LINE_PREFIX = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]?|[-*+][ \t]+|\d+[.)][ \t]+)", re.MULTILINE
)


def strip_markdown(text: str) -> str:
    """Remove Markdown markup, keeping the words: code fences (the fence lines), inline code
    backticks, links and images (their text), bold and italic markers, and heading, quote and
    list-item prefixes at line starts."""
    text = _FENCE_LINE.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _STRONG.sub(r"\2", text)
    text = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2) or "", text)
    return _LINE_PREFIX.sub("", text)


def apply_normalise(text: str, options: Sequence[NormaliseOption]) -> str:
    """Apply the exact grader's normalisations, always in this order whatever the list's order:

    - ``strip_markdown``: `strip_markdown`;
    - ``case``: Unicode NFKC then ``casefold``;
    - ``whitespace``: runs of whitespace become one space, ends stripped;
    - ``punctuation``: punctuation and whitespace stripped from both ends, as in
      `analysis.eval.cases.normalise_text` ("Paris." and "«Paris»" become "Paris"; "U.S.A"
      keeps its inner dots; "50%" and "C#" keep their signs).

    Unicode NFC (canonical composition, which never changes how text reads) always applies.
    """
    chosen = set(options)
    if "strip_markdown" in chosen:
        text = strip_markdown(text)
    text = unicodedata.normalize("NFKC" if "case" in chosen else "NFC", text)
    if "case" in chosen:
        text = text.casefold()
    if "whitespace" in chosen:
        text = " ".join(text.split())
    if "punctuation" in chosen:
        text = strip_edge_punctuation(text)
    return text


# --- extraction ------------------------------------------------------------------------------

# A number: optional sign (not right after a letter or digit, so "5-3" gives 3), digits with
# optional thousands commas, optional decimals, optional exponent, optional percent sign.
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.])[-+\u2212])?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?!\d|,\d)(?:\.\d+)?|\d+(?:\.\d+)?|(?<!\d)\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?"
    r"(?P<pct>\s?%)?"
)


def _numbers(text: str) -> list[re.Match[str]]:
    return list(_NUMBER.finditer(text))


def _canonical_number(m: re.Match[str]) -> str:
    sign = "-" if m.group("sign") in ("-", "\u2212") else ""
    pct = "%" if m.group("pct") else ""
    return f"{sign}{m.group('digits').replace(',', '')}{m.group('exp') or ''}{pct}"


def parse_number(text: str, *, percent: Literal["number", "fraction"] = "number") -> float | None:
    """The value of a canonical or written number ("1,234.5", "-3", "−2", "45 %", "1e-3").
    A percentage is its number (45 % -> 45.0) or, with ``percent="fraction"``, 0.45."""
    m = _NUMBER.fullmatch(text.strip())
    if m is None:
        return None
    value = float(m.group("digits").replace(",", "") + (m.group("exp") or ""))
    if m.group("sign") in ("-", "\u2212"):
        value = -value
    if m.group("pct") and percent == "fraction":
        value /= 100.0
    return value


def validate_extract(name: str, extract_spec: str | None) -> re.Pattern[str] | None:
    """Check an ``extract`` option (last_number | first_number | first_line |
    regex:<pattern>); returns the compiled pattern for ``regex:``."""
    if extract_spec is None or extract_spec in ("last_number", "first_number", "first_line"):
        return None
    if extract_spec.startswith("regex:"):
        try:
            return re.compile(extract_spec.removeprefix("regex:"))
        except re.error as exc:
            raise EvalInputError(
                f"{name} grader: key 'extract': invalid regex ({exc})", source=name
            ) from exc
    raise EvalInputError(
        f"{name} grader: key 'extract': {extract_spec!r} is not one of last_number, "
        "first_number, first_line, regex:<pattern>",
        source=name,
    )


def extract(output: str, extract_spec: str | None, pattern: re.Pattern[str] | None) -> str | None:
    """The part of ``output`` a grader compares: the whole output without ``extract_spec``;
    the first or last number (canonical: commas dropped, "−" as "-", "+" dropped); the first
    non-blank line; or the regex's first group (whole match without groups). None when
    nothing matches."""
    if extract_spec is None:
        return output
    if extract_spec in ("last_number", "first_number"):
        found = _numbers(output)
        if not found:
            return None
        return _canonical_number(found[-1] if extract_spec == "last_number" else found[0])
    if extract_spec == "first_line":
        return next((line.strip() for line in output.splitlines() if line.strip()), None)
    assert pattern is not None
    m = pattern.search(output)
    if m is None:
        return None
    return m.group(1) if pattern.groups else m.group(0)
