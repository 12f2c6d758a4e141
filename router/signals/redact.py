"""Redaction of captured prompts and completions, applied before anything reaches Redis.

A capture's ``redact`` list holds built-in names (`BUILTIN`) or regular expressions; every match
is replaced by a placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[REDACTED]`` for custom
patterns). Card numbers are looked for first, whatever the list's order, so that a 13 to 15
digit card is not taken for a phone number.
Patterns are compiled once per config change, never per request.

Every built-in runs in time linear in the text, whatever a client sends (bench/redact.py): each
pattern can start only where the previous character cannot continue it (a look-behind), its
repetitions are separated by characters they cannot match, and the card check is bounded per
candidate. Custom patterns are the operator's: they run as written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BUILTIN", "Redactor", "check_pattern", "luhn_valid"]

Rule = Callable[[str], str]

# -- e-mail addresses -------------------------------------------------------------------------
# Local parts and domain labels in any script (`\w` is Unicode), so `josé@exemple.fr` and
# `用户@例子.广告` are caught as well as `ana@example.com`; the full-width at sign (U+FF20) and
# the ideographic dots that IDNA reads as `.` count too. The TLD is letters (any script) or
# punycode (`xn--`). The local part leaves out `/`, `=`, `?`, backquotes and braces, which
# RFC 5322 allows but URLs, Markdown and code use around addresses.
# Anchored at the start of a local part: without the look-behind, a long run of local-part
# characters would be rescanned from every position (quadratic time on hostile input).
_LOCAL = r"[\w.!#$%&'*+^~-]"
_DOT = r"[.\u3002\uff0e\uff61]"
_EMAIL = re.compile(
    rf"(?<!{_LOCAL}){_LOCAL}+[@\uff20][\w-]+(?:{_DOT}[\w-]+)*{_DOT}(?:xn--[\w-]+|[^\W\d_]{{2,}})"
)

# -- phone numbers ----------------------------------------------------------------------------
# A run of digits with the separators phone numbers use; kept only with 7 to 15 digits, so
# that years, prices and short counts stay; not after a word and a dash (INV-2024-000123), and
# not when it is a date (2024-01-15, 15.01.2024, with an hour after it) or an IPv4 address.
_PHONE = re.compile(r"(?<![\w.])(?<!\w-)\+?\(?\d[\d\s().-]{5,}\d(?![\w.]*\d)")
_NOT_PHONE = re.compile(
    r"(?:\d{4}([./-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{2,4})(?:\s\d{1,2})?"
    r"|\d{1,3}(?:\.\d{1,3}){3}"
)


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    if _NOT_PHONE.fullmatch(text):
        return text
    digits = sum(c.isdigit() for c in text)
    return "[PHONE]" if 7 <= digits <= 15 else text


# -- card numbers -----------------------------------------------------------------------------
# Candidates have the layouts cards are written in, with one kind of separator throughout (one
# or two spaces, a dot or a dash): 13 to 19 digits in a row; 4-4-4-(1 to 4) with an optional
# fifth group of 1 to 3 (up to 19 digits); 4-6-4 and 4-6-5 (Diners, Amex). A candidate is
# replaced only when its digits pass the Luhn check, so that order numbers, amounts, dates and
# most long numbers stay. Bare digits after `<digit>.` or `<digit>,` are a decimal's fraction,
# not a card. Digits are any script's (`\d`: full-width or Arabic-Indic too), spaces include the
# no-break, thin and ideographic ones, dashes the typographic ones.
_SPACES = " \u00a0\u2009\u202f\u3000"
_DASHES = "-\u2010\u2011\u2012\u2013"
_SPACE = f"[{_SPACES}]{{1,2}}"
_DOTS = r"\."
_DASH = f"[{_DASHES}]"


def _grouped(sep: str) -> str:
    """4-4-4-(1 to 4) with an optional fifth group of 1 to 3, or 4-6-(4 or 5), split by `sep`."""
    four = rf"\d{{4}}{sep}\d{{4}}{sep}\d{{1,4}}(?:{sep}\d{{1,3}})?"
    six = rf"\d{{6}}{sep}\d{{4,5}}"
    return rf"\d{{4}}{sep}(?:{four}|{six})"


# Zero-width, the candidate in a look-ahead: `finditer` then yields the candidate at every
# start (group starts included), overlapping, in one pass of the regex engine. The leading
# `(?=\d)` lets the engine skip text without digits quickly.
_CARD = re.compile(
    r"(?=\d)(?<!\d)(?=((?<!\d[.,])\d{13,19}(?![.,]\d)"
    f"|{_grouped(_SPACE)}|{_grouped(_DOTS)}|{_grouped(_DASH)})"
    r"(?!\d))"
)
# A candidate in ASCII: separators as " " or "-", digits of other scripts as 0-9 (learnt as
# they are met: at most the few hundred decimal digits Unicode has).
_ASCII = str.maketrans({**dict.fromkeys(_SPACES[1:], " "), **dict.fromkeys(_DASHES[1:], "-")})
_UNSEPARATED = str.maketrans("", "", " .-")
_DOUBLED = str.maketrans("0123456789", "0246813579")  # the digit sum of 2*d


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check (the last digit checks the rest)."""
    # sum() of the ASCII bytes, less 48 a digit: the digit sum without a Python-level loop
    kept = digits[-1::-2].encode()
    doubled = digits[-2::-2].translate(_DOUBLED).encode()
    return (sum(kept) + sum(doubled) - 48 * len(digits)) % 10 == 0


def _card_length(candidate: str) -> int:
    """The length of the card number a candidate starts with: all of it, or it without a fifth
    group (an expiry month or a security code written after the number) if that passes the
    Luhn check; 0 when neither does."""
    if not candidate.isascii():
        candidate = _in_ascii(candidate)
    digits = candidate.translate(_UNSEPARATED)
    if luhn_valid(digits):
        return len(candidate)
    if len(digits) > 16:  # 4-4-4-4 and a fifth group, or 17 to 19 digits in a row
        head = candidate.rstrip("0123456789").rstrip(" .-")
        kept = head.translate(_UNSEPARATED)
        if len(kept) == 16 and luhn_valid(kept):
            return len(head)
    return 0


def _in_ascii(candidate: str) -> str:
    """A candidate with other scripts' digits and separators in ASCII (the same length)."""
    out = candidate.translate(_ASCII)
    if not out.isascii():
        for c in set(out):  # the rest are digits (`\d`), which all have a decimal value
            if not c.isascii():
                _ASCII[ord(c)] = str(unicodedata.decimal(c))
        out = candidate.translate(_ASCII)
    return out


def _cards(text: str) -> str:
    """`text` with every card number replaced by ``[CARD]``.

    Every start is tried, not only the first of a run of digit groups, so that a card right
    after other digits (`qty 2 4111 1111 1111 1111`, `in 2024 4111 ...`) is still found; a
    candidate is at most about 40 characters, so this stays linear."""
    out: list[str] = []
    done = 0
    for match in _CARD.finditer(text):
        start = match.start()
        if start < done:
            continue  # inside a card already replaced
        length = _card_length(match.group(1))
        if length:
            out += [text[done:start], "[CARD]"]
            done = start + length
    return "".join(out) + text[done:] if out else text


def _sub(pattern: re.Pattern[str], replacement: str | Callable[[re.Match[str]], str]) -> Rule:
    return lambda text: pattern.sub(replacement, text)


def _emails(text: str) -> str:
    if "@" not in text and "\uff20" not in text:  # a scan in C, much cheaper than the regex
        return text
    return _EMAIL.sub("[EMAIL]", text)


BUILTIN: dict[str, Rule] = {
    "emails": _emails,
    "phone_numbers": _sub(_PHONE, _phone),
    "credit_cards": _cards,
}
_FIRST = "credit_cards"


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
    """Applies its rules in order: card numbers first, then the others as listed."""

    rules: tuple[Rule, ...]

    @classmethod
    def from_config(cls, items: list[str]) -> Redactor:
        ordered = sorted(items, key=lambda i: i != _FIRST)  # stable: the rest keep their order
        rules = [BUILTIN[i] if i in BUILTIN else _sub(re.compile(i), "[REDACTED]") for i in ordered]
        return cls(tuple(rules))

    def __call__(self, text: str) -> str:
        for rule in self.rules:
            text = rule(text)
        return text
