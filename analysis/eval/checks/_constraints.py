"""Instruction-following constraints: parameter validation and one check per type.

The constraint types and the definitions they count with are documented in
`analysis.eval.checks`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from analysis.eval.checks._text import (
    LETTERS,
    bullet_items,
    count_sentences,
    count_words,
    detect_language,
    language_hits,
    numbered_items,
    paragraphs,
)
from analysis.eval.types import EvalInputError

Check = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Constraint:
    """One validated instruction-following constraint; ``check`` says why it fails, or None."""

    type: str
    check: Check


class _Params:
    """Reads one constraint's parameters, raising `EvalInputError` with the case id and type."""

    def __init__(self, raw: Mapping[str, Any], ctype: str, case_id: str) -> None:
        self._raw = raw
        self._where = f"case {case_id!r}, constraint {ctype!r}"
        self._used: set[str] = {"type"}

    def error(self, message: str) -> EvalInputError:
        return EvalInputError(f"{self._where}: {message}")

    def get(self, key: str) -> Any:
        self._used.add(key)
        return self._raw.get(key)

    def count(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(f"{key!r} must be a non-negative integer, got {value!r}")
        return value

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{key!r} must be a non-empty string, got {value!r}")
        return value

    def texts(self, key: str) -> list[str]:
        value = self.get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise self.error(f"{key!r} must be a non-empty list of non-empty strings")
        return list(value)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.error(f"{key!r} must be true or false, got {value!r}")
        return value

    def bounds(self) -> tuple[int | None, int | None]:
        exact, lo, hi = self.count("exact"), self.count("min"), self.count("max")
        if exact is not None:
            if lo is not None or hi is not None:
                raise self.error("give 'exact' or 'min'/'max', not both")
            return exact, exact
        if lo is None and hi is None:
            raise self.error("needs 'exact', 'min' or 'max'")
        if lo is not None and hi is not None and lo > hi:
            raise self.error(f"'min' {lo} is above 'max' {hi}")
        return lo, hi

    def finish(self) -> None:
        unknown = sorted(set(self._raw) - self._used)
        if unknown:
            raise self.error(f"unknown parameters {unknown}")


def _bounds_violation(n: int, lo: int | None, hi: int | None, unit: str) -> str | None:
    if lo is not None and lo == hi:
        return None if n == lo else f"{n} {unit}, expected exactly {lo}"
    if lo is not None and n < lo:
        return f"{n} {unit}, expected at least {lo}"
    if hi is not None and n > hi:
        return f"{n} {unit}, expected at most {hi}"
    return None


def _counting(measure: Callable[[str], int], unit: str) -> Callable[[_Params], Check]:
    def build(p: _Params) -> Check:
        lo, hi = p.bounds()
        return lambda text: _bounds_violation(measure(text), lo, hi, unit)

    return build


def _numbered_list(p: _Params) -> Check:
    lo, hi = p.bounds()

    def check(text: str) -> str | None:
        numbers = numbered_items(text)
        if numbers != list(range(1, len(numbers) + 1)):
            return f"items numbered {numbers}, expected 1, 2, 3..."
        return _bounds_violation(len(numbers), lo, hi, "numbered items")

    return check


def _case(upper: bool) -> Callable[[_Params], Check]:
    def build(p: _Params) -> Check:
        def check(text: str) -> str | None:
            if not LETTERS.search(text):
                return "no letters"
            if upper and text != text.upper():
                return "contains lowercase letters"
            if not upper and text != text.lower():
                return "contains uppercase letters"
            return None

        return check

    return build


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def _required_words(p: _Params) -> Check:
    patterns = {w: _word_pattern(w) for w in p.texts("words")}

    def check(text: str) -> str | None:
        missing = [w for w, pattern in patterns.items() if not pattern.search(text)]
        return f"missing {missing}" if missing else None

    return check


def _forbidden_words(p: _Params) -> Check:
    patterns = {w: _word_pattern(w) for w in p.texts("words")}

    def check(text: str) -> str | None:
        present = [w for w, pattern in patterns.items() if pattern.search(text)]
        return f"uses {present}" if present else None

    return check


def _language(p: _Params) -> Check:
    lang = p.text("lang")
    if lang not in ("fr", "en"):
        raise p.error(f"'lang' must be 'fr' or 'en', got {lang!r}")

    def check(text: str) -> str | None:
        found = detect_language(text)
        fr, en = language_hits(text)
        return None if found == lang else f"reads as {found} ({fr} fr / {en} en function words)"

    return check


def _starts_with(p: _Params) -> Check:
    word = p.text("word")
    if len(word.split()) != 1:
        raise p.error(f"'word' must be a single word, got {word!r}")

    def check(text: str) -> str | None:
        tokens = text.split()
        first = tokens[0].strip("\"'“”‘’*_.,:;!?()") if tokens else ""
        return None if first.lower() == word.lower() else f"starts with {first!r}"

    return check


def _ends_with(p: _Params) -> Check:
    ending = p.text("text").strip()

    def check(text: str) -> str | None:
        tail = text.rstrip()
        return None if tail.endswith(ending) else f"ends with {tail[-len(ending) - 10 :]!r}"

    return check


_JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*)\n```$", re.DOTALL | re.IGNORECASE)


def _json_object(p: _Params) -> Check:
    keys = p.texts("keys")
    exact = p.flag("exact_keys")

    def check(text: str) -> str | None:
        stripped = text.strip()
        fenced = _JSON_FENCE.match(stripped)
        try:
            value = json.loads(fenced.group(1) if fenced else stripped)
        except ValueError:
            return "not a JSON document"
        if not isinstance(value, dict):
            return f"JSON {type(value).__name__}, not an object"
        missing = [k for k in keys if k not in value]
        if missing:
            return f"missing keys {missing}"
        extra = sorted(set(value) - set(keys))
        return f"extra keys {extra}" if exact and extra else None

    return check


def _no_commas(p: _Params) -> Check:
    def check(text: str) -> str | None:
        n = text.count(",")
        return None if n == 0 else f"contains {n} comma{'' if n == 1 else 's'}"

    return check


CONSTRAINT_TYPES: Final[Mapping[str, Callable[[_Params], Check]]] = {
    "word_count": _counting(count_words, "words"),  # exact | min | max
    "sentence_count": _counting(count_sentences, "sentences"),  # exact | min | max
    "paragraph_count": _counting(lambda t: len(paragraphs(t)), "paragraphs"),  # exact|min|max
    "bullet_count": _counting(bullet_items, "bullets"),  # exact | min | max
    "numbered_list": _numbered_list,  # exact | min | max; numbered 1..N
    "lowercase": _case(upper=False),
    "uppercase": _case(upper=True),
    "required_words": _required_words,  # words: [str]; whole words, any case
    "forbidden_words": _forbidden_words,  # words: [str]; whole words, any case
    "language": _language,  # lang: "fr" | "en"
    "starts_with": _starts_with,  # word: str; first word, any case, punctuation ignored
    "ends_with": _ends_with,  # text: str; exact suffix, trailing whitespace ignored
    "json_object": _json_object,  # keys: [str]; exact_keys: bool (default false)
    "no_commas": _no_commas,
}


def parse_constraints(raw: object, case_id: str) -> list[Constraint]:
    """Validate a case's ``constraints`` list; `EvalInputError` (a ValueError) names the case
    and the problem."""
    if not isinstance(raw, list) or not raw:
        raise EvalInputError(f"case {case_id!r}: 'constraints' must be a non-empty list")
    constraints = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            raise EvalInputError(
                f"case {case_id!r}: each constraint needs a string 'type': {item!r}"
            )
        ctype = item["type"]
        build = CONSTRAINT_TYPES.get(ctype)
        if build is None:
            raise EvalInputError(
                f"case {case_id!r}: unknown constraint type {ctype!r} "
                f"(known: {', '.join(sorted(CONSTRAINT_TYPES))})"
            )
        params = _Params(item, ctype, case_id)
        check = build(params)
        params.finish()
        constraints.append(Constraint(ctype, check))
    return constraints
