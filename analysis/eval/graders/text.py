"""Pass/fail graders on the output's text: ``exact``, ``regex`` and ``numeric``.

exact
    The output (after ``extract``, then ``normalise``) equals the case's ``expected`` (a
    string, or a list of acceptable strings; numbers are compared as their decimal text),
    normalised the same way. ``normalise`` defaults to ``[whitespace]``; options are
    ``case``, ``whitespace``, ``punctuation``, ``strip_markdown`` (see
    `analysis.eval.graders.base.apply_normalise`). ``extract``: ``last_number``,
    ``first_number``, ``first_line`` or ``regex:<pattern>`` (its first group, or the match).

regex
    ``pattern`` (config) or the case's ``fields["pattern"]`` (which wins when both are set) is
    searched for in the output (``mode``: search, the default, or match / fullmatch).
    ``must_match: false`` turns it into a forbidden pattern: the output passes when it does
    *not* match (a case may override with ``fields["must_match"]``). ``flags``: a list of
    ``i``/``ignorecase``, ``m``/``multiline``, ``s``/``dotall``, ``x``/``verbose``.

numeric
    The number in the output (``extract``: ``last_number`` by default, ``first_number`` or
    ``regex:<pattern>``; "1,234.5", "-3", "−3", "45 %" and "1e-3" are understood) equals the
    case's ``expected`` (a number or a numeric string) within ``abs_tol`` (default 1e-6) or
    ``rel_tol`` (default 0), as ``math.isclose``. A case's ``fields["tolerance"]`` overrides
    ``abs_tol``. ``percent``: ``number`` (45 % is 45, the default) or ``fraction`` (0.45).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field

from analysis.eval.graders.base import (
    GraderConfig,
    NormaliseOption,
    apply_normalise,
    extract,
    parse_number,
    shorten,
    validate_config,
    validate_extract,
)
from analysis.eval.types import EvalCase, EvalInputError, Grade, GraderKind

__all__ = ["ExactGrader", "NumericGrader", "RegexGrader"]


def _case_error(grader: str, case: EvalCase, problem: str) -> EvalInputError:
    return EvalInputError(f"{grader} grader: case {case.id!r}: {problem}", source=case.id)


def _pass(detail: str) -> Grade:
    return Grade(passed=True, score=1.0, detail=detail)


def _fail(detail: str) -> Grade:
    return Grade(passed=False, score=0.0, detail=detail)


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _default_normalise() -> list[NormaliseOption]:
    return ["whitespace"]


class ExactConfig(GraderConfig):
    type: Literal["exact"] = "exact"
    normalise: list[NormaliseOption] = Field(default_factory=_default_normalise)
    extract: str | None = None


class ExactGrader:
    kind: GraderKind = "pass_fail"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._config = validate_config("exact", ExactConfig, raw)
        self._pattern = validate_extract("exact", self._config.extract)

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json")

    def _expected(self, case: EvalCase) -> list[str]:
        raw = case.expected if isinstance(case.expected, list) else [case.expected]
        texts = [_as_text(v) for v in raw]
        if not raw or any(t is None for t in texts):
            raise _case_error("exact", case, "'expected' must be a string or a list of strings")
        return [t for t in texts if t is not None]

    def check_case(self, case: EvalCase) -> None:
        self._expected(case)

    def grade(self, case: EvalCase, output: str) -> Grade:
        accepted = self._expected(case)
        got = extract(output, self._config.extract, self._pattern)
        if got is None:
            return _fail(f"nothing to extract ({self._config.extract}) from the output")
        norm = apply_normalise(got, self._config.normalise)
        for want in accepted:
            if apply_normalise(want, self._config.normalise) == norm:
                return _pass(f"matched {shorten(want, 40)!r}")
        return _fail(f"expected {shorten(accepted[0], 40)!r}, got {shorten(norm, 40)!r}")


_FLAGS = {
    "i": re.IGNORECASE,
    "ignorecase": re.IGNORECASE,
    "m": re.MULTILINE,
    "multiline": re.MULTILINE,
    "s": re.DOTALL,
    "dotall": re.DOTALL,
    "x": re.VERBOSE,
    "verbose": re.VERBOSE,
}


class RegexConfig(GraderConfig):
    type: Literal["regex"] = "regex"
    pattern: str | None = None
    flags: list[str] = Field(default_factory=list)
    must_match: bool = True
    mode: Literal["search", "match", "fullmatch"] = "search"


class RegexGrader:
    kind: GraderKind = "pass_fail"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._config = cfg = validate_config("regex", RegexConfig, raw)
        flags = 0
        for flag in cfg.flags:
            if flag.lower() not in _FLAGS:
                raise EvalInputError(
                    f"regex grader: key 'flags': unknown flag {flag!r}; use i, m, s or x",
                    source="regex",
                )
            flags |= _FLAGS[flag.lower()]
        self._flags = flags
        self._compiled: dict[str, re.Pattern[str]] = {}
        self._default = (
            self._compile(cfg.pattern, "regex grader: key 'pattern'")
            if (cfg.pattern is not None)
            else None
        )

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json")

    def _compile(self, pattern: str, where: str) -> re.Pattern[str]:
        if pattern not in self._compiled:
            try:
                self._compiled[pattern] = re.compile(pattern, self._flags)
            except re.error as exc:
                raise EvalInputError(f"{where}: invalid regex ({exc})", source="regex") from exc
        return self._compiled[pattern]

    def _rule(self, case: EvalCase) -> tuple[re.Pattern[str], bool]:
        pattern = case.fields.get("pattern")
        must_match = case.fields.get("must_match", self._config.must_match)
        if not isinstance(must_match, bool):
            raise _case_error("regex", case, "'must_match' must be true or false")
        if pattern is None:
            if self._default is None:
                raise _case_error("regex", case, "no 'pattern' in the grader config or the case")
            return self._default, must_match
        if not isinstance(pattern, str):
            raise _case_error("regex", case, "'pattern' must be a string")
        return self._compile(pattern, f"regex grader: case {case.id!r}"), must_match

    def check_case(self, case: EvalCase) -> None:
        self._rule(case)

    def grade(self, case: EvalCase, output: str) -> Grade:
        pattern, must_match = self._rule(case)
        m = getattr(pattern, self._config.mode)(output)
        shown = shorten(pattern.pattern, 40)
        if must_match:
            if m is not None:
                return _pass(f"matched /{shown}/")
            return _fail(f"no match for /{shown}/")
        if m is None:
            return _pass(f"forbidden /{shown}/ absent")
        return _fail(f"forbidden /{shown}/ matched {shorten(m.group(0), 40)!r}")


class NumericConfig(GraderConfig):
    type: Literal["numeric"] = "numeric"
    extract: str = "last_number"
    abs_tol: float = Field(default=1e-6, ge=0.0)
    rel_tol: float = Field(default=0.0, ge=0.0)
    percent: Literal["number", "fraction"] = "number"


class NumericGrader:
    kind: GraderKind = "pass_fail"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._config = cfg = validate_config("numeric", NumericConfig, raw)
        if cfg.extract == "first_line":
            raise EvalInputError(
                "numeric grader: key 'extract': use last_number, first_number or regex:<pattern>",
                source="numeric",
            )
        self._pattern = validate_extract("numeric", cfg.extract)

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json")

    def _expected(self, case: EvalCase) -> tuple[float, float]:
        value = case.expected
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            number = parse_number(value, percent=self._config.percent)
        if number is None or not math.isfinite(number):
            raise _case_error("numeric", case, "'expected' must be a number")
        tol = case.fields.get("tolerance", self._config.abs_tol)
        if isinstance(tol, bool) or not isinstance(tol, int | float) or tol < 0:
            raise _case_error("numeric", case, "'tolerance' must be a non-negative number")
        return number, float(tol)

    def check_case(self, case: EvalCase) -> None:
        self._expected(case)

    def grade(self, case: EvalCase, output: str) -> Grade:
        want, abs_tol = self._expected(case)
        cfg = self._config
        text = extract(output, cfg.extract, self._pattern)
        if text is not None and self._pattern is not None:
            # regex: the first number inside what the pattern captured
            text = extract(text, "first_number", None)
        got = None if text is None else parse_number(text, percent=cfg.percent)
        if got is None:
            return _fail("no number in the output")
        if math.isclose(got, want, rel_tol=cfg.rel_tol, abs_tol=abs_tol):
            return _pass(f"{got:g} == {want:g}")
        return _fail(f"expected {want:g}, got {got:g}")
