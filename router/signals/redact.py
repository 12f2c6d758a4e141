"""Redaction of captured prompts and completions, applied before anything reaches Redis.

A capture's ``redact`` list holds built-in names (`BUILTIN`) or regular expressions; every match
is replaced by a placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[REDACTED]`` for custom
patterns).
Patterns are compiled once per config change, never per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BUILTIN", "Redactor", "check_pattern"]

# Anchored at the start of a local part: without the look-behind, a long run of local-part
# characters would be rescanned from every position (quadratic time on hostile input).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# A run of digits with the separators phone numbers use; kept only with 7 to 15 digits, so
# that years, prices and short counts stay.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{5,}\d(?![\w.]*\d)")


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[PHONE]" if 7 <= digits <= 15 else match.group()


_CARD = re.compile(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])")

BUILTIN: dict[str, tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = {
    "emails": (_EMAIL, "[EMAIL]"),
    "phone_numbers": (_PHONE, _phone),
    "credit_cards": (_CARD, "[CARD]"),
}


def check_pattern(item: str) -> str:
    """``item`` if it is a built-in name or a usable regular expression, else `ValueError`."""
    if item in BUILTIN:
        return item
    try:
        compiled = re.compile(item)
    except re.error as exc:
        raise ValueError(
            f"redact: {item!r} is neither a built-in ({', '.join(BUILTIN)}) nor a valid regular "
            f"expression ({exc})"
        ) from None
    if compiled.match(""):
        raise ValueError(f"redact: the pattern {item!r} matches the empty string")
    return item


@dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces every match of its patterns, in order."""

    rules: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]

    @classmethod
    def from_config(cls, items: list[str]) -> Redactor:
        rules = [BUILTIN[i] if i in BUILTIN else (re.compile(i), "[REDACTED]") for i in items]
        return cls(tuple(rules))

    def __call__(self, text: str) -> str:
        for pattern, replacement in self.rules:
            text = pattern.sub(replacement, text)
        return text
