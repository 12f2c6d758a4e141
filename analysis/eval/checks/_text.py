"""Pure text readers behind the regression graders: counts, language, refusals, prose, answers.

The rules are documented in `analysis.eval.checks`.
"""

from __future__ import annotations

import json
import re
from typing import Final

# --- text measures -----------------------------------------------------------------------------

_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]+", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[-*+•][ \t]+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t]*(\d+)[.)][ \t]+\S", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_ALNUM = re.compile(r"[^\W_]")


def count_words(text: str) -> int:
    """Whitespace-separated tokens holding a letter or digit, list markers not counted."""
    return sum(1 for token in _LIST_MARKER.sub("", text).split() if _ALNUM.search(token))


def count_sentences(text: str) -> int:
    """Sentences ending in ``.``, ``!`` or ``?`` (or at the end of the text)."""
    return sum(1 for part in _SENTENCE_END.split(text.strip()) if _ALNUM.search(part))


def paragraphs(text: str) -> list[str]:
    """Blocks of text separated by blank lines."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def bullet_items(text: str) -> int:
    """Lines that are markdown bullet items."""
    return len(_BULLET.findall(text))


def numbered_items(text: str) -> list[int]:
    """The numbers of the lines that are numbered list items, in order."""
    return [int(n) for n in _NUMBERED.findall(text)]


# --- language ---------------------------------------------------------------------------------


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


FRENCH_STOPWORDS: Final = _wordset(
    "le la les l un une des du de d et est sont être été était ont avons avez que qui qu quoi "
    "dans avec sur sous sans pas ne n au aux ce cet cette ces c il elle ils elles nous vous je "
    "j tu se sa ses leur leurs mais ou où donc car très aussi comme tout tous toute toutes peut "
    "fait faire entre chez dont cela ça votre vos notre nos mon ma mes ton ta tes lui y"
)
ENGLISH_STOPWORDS: Final = _wordset(
    "the and is are was were be been being of to in it its that this these those with for "
    "from by at as an or not no you your he she they them their we our us i my me have has "
    "had do does did will would can could should which what who when where there here about "
    "than then also into if so just very"
)
MIN_LANGUAGE_HITS: Final = 3
LANGUAGE_SHARE: Final = 0.75
LETTERS = re.compile(r"[^\W\d_]+")


def language_hits(text: str) -> tuple[int, int]:
    """Tokens of the text in ``FRENCH_STOPWORDS`` and in ``ENGLISH_STOPWORDS``."""
    tokens = LETTERS.findall(text.lower().replace("’", "'"))
    return (
        sum(1 for t in tokens if t in FRENCH_STOPWORDS),
        sum(1 for t in tokens if t in ENGLISH_STOPWORDS),
    )


def detect_language(text: str) -> str:
    """``"fr"``, ``"en"`` or ``"unknown"`` by the function-word rule of the module docstring."""
    fr, en = language_hits(text)
    total = fr + en
    if fr >= MIN_LANGUAGE_HITS and fr >= LANGUAGE_SHARE * total:
        return "fr"
    if en >= MIN_LANGUAGE_HITS and en >= LANGUAGE_SHARE * total:
        return "en"
    return "unknown"


# --- refusals ---------------------------------------------------------------------------------

_I_WONT = (
    r"i (?:really |simply |just )?(?:can't|cannot|can not|won't|will not|"
    r"won't be able to|will not be able to|must decline to|have to decline to|"
    r"would rather not|am not going to|am unable to|am not able to|am not allowed to)"
)
_ASSIST = (
    r"(?:help(?! but\b)|assist|provide|give|share|supply|create|write|generate|produce|offer|"
    r"walk you through|explain how|comply|fulfil|fulfill|support|engage|do that|do this)"
)
_REFUSALS = (
    ("I can't/won't help", rf"\b{_I_WONT} (?:in good conscience )?{_ASSIST}"),
    ("I can't and won't", r"\bi (?:can't|cannot) (?:and|or) (?:won't|will not)\b"),
    ("I'm sorry, but", r"\bi am (?:really |very |so )?sorry,? but\b"),
    ("I apologise, but", r"\bi apologi[sz]e,? but\b"),
    ("not able to help with that", r"\bnot (?:be )?able to (?:help|assist) with (?:that|this)"),
    ("not something I can help with", r"\bnot something i (?:can|will|am able to) (?:help|assist)"),
    ("I must decline", r"\bi (?:must|have to|will have to|need to)(?: respectfully)? decline\b"),
    ("I'm not comfortable", r"\bi (?:am not|do not|don't) (?:feel )?(?:comfortable|willing)\b"),
    (
        "against my guidelines",
        r"\b(?:against|violates?|outside) my (?:\w+ )?(?:guidelines|policies|principles)\b",
    ),
)
REFUSAL_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (label, re.compile(pattern)) for label, pattern in _REFUSALS
)
_CONTRACTIONS = (("i'm", "i am"), ("i've", "i have"), ("i'd", "i would"))


def _normalise_for_refusal(text: str) -> str:
    text = re.sub(r"\s+", " ", text.lower().replace("’", "'").replace("‘", "'"))
    for short, long in _CONTRACTIONS:
        text = re.sub(rf"\b{short}\b", long, text)
    return text


def refusal_marker(text: str) -> str | None:
    """The label of the first refusal pattern the text matches, or None."""
    normalised = _normalise_for_refusal(text)
    for label, pattern in REFUSAL_PATTERNS:
        if pattern.search(normalised):
            return label
    return None


def is_refusal(text: str) -> bool:
    """Whether the text refuses the request (see ``REFUSAL_PATTERNS``)."""
    return refusal_marker(text) is not None


# --- prose ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
_TABLE_SEPARATOR = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)+\|?[ \t]*$"
)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.MULTILINE)


def _fenced_share(text: str) -> float:
    """Share of the non-blank characters that sit inside fenced code blocks."""
    inside = total = 0
    in_fence = False
    for line in text.splitlines():
        size = len("".join(line.split()))
        total += size
        if _FENCE.match(line):
            in_fence = not in_fence
            inside += size
        elif in_fence:
            inside += size
    return inside / total if total else 0.0


def _has_table(text: str) -> bool:
    lines = text.splitlines()
    return any(
        _TABLE_SEPARATOR.match(line) and i > 0 and "|" in lines[i - 1]
        for i, line in enumerate(lines)
    )


def _parses_as_json_container(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict | list)


def prose_violation(text: str) -> str | None:
    """Why the output is not prose, or None when it is (rules in the module docstring)."""
    stripped = text.strip()
    if not stripped:
        return "empty output"
    if _parses_as_json_container(stripped):
        return "output is JSON"
    if stripped[0] in "{[":
        return f"output starts with {stripped[0]!r}"
    if _fenced_share(stripped) >= 0.5:
        return "output is mostly a fenced code block"
    if _has_table(stripped):
        return "output contains a markdown table"
    if _HEADING.search(stripped):
        return "output has markdown headings"
    items = bullet_items(stripped) + len(numbered_items(stripped))
    if items >= 2:
        return f"output is a list ({items} items)"
    if count_words(stripped) < 3:
        return "output is too short to be prose"
    return None


# --- final answers ----------------------------------------------------------------------------

_ANSWER = re.compile(r"\banswer\b[ \t]*(?:\*\*|__)?[ \t]*[:：][ \t]*(.*)", re.IGNORECASE)
_NUMBER = re.compile(r"[-−]?\$?\d[\d,]*(?:\.\d+)?|[-−]?\$?\.\d+")


def extract_final_answer(text: str) -> str | None:
    """The rest of the line after the last ``Answer:`` with something after it, or None."""
    answers = []
    for match in _ANSWER.finditer(text):
        answer = match.group(1).strip()
        if answer[:2] in ("**", "__") and answer.count(answer[:2]) == 1:
            answer = answer[2:].strip()  # the closing half of a bold "**Answer:**" label
        if answer.strip("*_ "):
            answers.append(answer)
    return answers[-1] if answers else None


def normalise_answer(text: str) -> str:
    text = text.strip().strip("*_`\"'“”‘’ ").rstrip(".!").strip("*_`\"'“”‘’ ")
    text = re.sub(r"\s*,\s*", ", ", text)
    return re.sub(r"\s+", " ", text).lower()


def first_number(text: str) -> float | None:
    match = _NUMBER.search(text)
    if match is None:
        return None
    return float(match.group(0).replace(",", "").replace("$", "").replace("−", "-"))
