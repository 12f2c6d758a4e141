"""Deterministic text generation, token counting and answer quality for the emulator.

Everything here is a pure function of its arguments; nothing depends on Python's ``hash()``,
the clock or global random state, so two emulator processes with the same seed answer alike.

**Text.** `generate` hashes ``(model, prompt, seed, index)`` with SHA-256 (scheme ``v1``, see
`_digest`) and derives from the digest:

- the answer's natural length, 16 to 64 words (``index`` is the choice number, 0 for ``n=1``);
- whether the answer is *good*: true with probability ``quality`` (`answer_is_good`);
- the words, drawn from a fixed vocabulary.

A good answer ends with the word ``Resolved.``; a bad one never does. A simulated user therefore
judges an answer from its text alone with `is_good_answer`, without special access to the
emulator. An answer cut short by ``max_tokens`` loses its last word and counts as bad, as a
truncated answer would.

**Tokens.** One token is one whitespace-separated word: ``prompt_tokens`` counts the words of the
prompt (for chat, the text of all message contents joined), ``completion_tokens`` the words of the
generated text. This approximates a tokenizer; it is not one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from serving.emulator.answers import ScriptedAnswer

__all__ = [
    "GOOD_ANSWER_MARKER",
    "Generation",
    "answer_is_good",
    "count_tokens",
    "generate",
    "is_good_answer",
    "scripted",
]

#: The last word of every good answer.
GOOD_ANSWER_MARKER = "Resolved."

_SCHEME = b"abgate-emulator-v1"
_MIN_WORDS = 16
_MAX_WORDS = 64

# 64 words, so that one byte modulo the size picks a word without bias.
_VOCABULARY: tuple[str, ...] = (
    "please", "check", "your", "account", "settings", "and", "try", "again",
    "the", "order", "was", "shipped", "today", "refund", "will", "arrive",
    "within", "five", "business", "days", "we", "have", "updated", "record",
    "thank", "you", "for", "waiting", "this", "issue", "is", "known",
    "our", "team", "can", "help", "with", "that", "request", "next",
    "step", "reset", "password", "from", "login", "page", "invoice", "attached",
    "support", "ticket", "opened", "confirm", "email", "address", "plan", "upgrade",
    "billing", "cycle", "starts", "now", "device", "restart", "usually", "works",
)  # fmt: skip
assert len(_VOCABULARY) == 64


@dataclass(frozen=True, slots=True)
class Generation:
    """One generated choice.

    Attributes:
        tokens: the text in stream pieces, one token each; ``"".join(tokens) == text`` (every
            piece after the first carries the whitespace before its word).
        text: the generated text.
        finish_reason: ``"length"`` when ``max_tokens`` cut it short, else ``"stop"``.
        good: whether the full answer was good (it is only judged good by `is_good_answer`
            when it was not cut short).
    """

    tokens: tuple[str, ...]
    text: str
    finish_reason: Literal["stop", "length"]
    good: bool


def _digest(model: str, prompt: str, seed: int, index: int) -> bytes:
    """SHA-256 of the versioned scheme tag and the arguments, NUL-separated."""
    parts = (_SCHEME, model.encode(), prompt.encode(), str(seed).encode(), str(index).encode())
    return hashlib.sha256(b"\x00".join(parts)).digest()


def _uniform(digest: bytes) -> float:
    """A number in [0, 1) from the first 8 bytes of ``digest``."""
    return int.from_bytes(digest[:8], "big") / 2.0**64


def answer_is_good(model: str, prompt: str, seed: int, quality: float, index: int = 0) -> bool:
    """Whether the answer of ``model`` to ``prompt`` is good: true with probability ``quality``.

    Deterministic in its arguments; ``quality=1`` is always good, ``quality=0`` never.
    """
    return _uniform(_digest(model, prompt, seed, index)) < quality


def is_good_answer(text: str) -> bool:
    """Judge a generated answer from its text: good answers end with ``Resolved.``."""
    return text.rstrip().endswith(GOOD_ANSWER_MARKER)


def count_tokens(text: str) -> int:
    """The emulator's token count: whitespace-separated words."""
    return len(text.split())


def _words(digest: bytes, count: int) -> list[str]:
    words: list[str] = []
    block = 0
    while len(words) < count:
        stream = hashlib.sha256(digest + block.to_bytes(4, "big")).digest()
        words.extend(_VOCABULARY[byte % len(_VOCABULARY)] for byte in stream)
        block += 1
    return words[:count]


def generate(
    model: str,
    prompt: str,
    *,
    seed: int,
    quality: float,
    max_tokens: int | None = None,
    index: int = 0,
) -> Generation:
    """The answer of ``model`` to ``prompt``: deterministic in all arguments.

    Args:
        model: the name the request resolved to (adapter name or first served name).
        prompt: the prompt text.
        seed: the emulator's seed.
        quality: probability that the answer is good.
        max_tokens: cut the answer to this many words (``finish_reason="length"``).
        index: the choice number (``n > 1`` gives different answers per choice).
    """
    digest = _digest(model, prompt, seed, index)
    good = _uniform(digest) < quality
    length = _MIN_WORDS + int.from_bytes(digest[8:10], "big") % (_MAX_WORDS - _MIN_WORDS + 1)
    body = _words(digest, length - 1 if good else length)
    body[0] = body[0].capitalize()
    body[-1] += "."
    if good:
        body.append(GOOD_ANSWER_MARKER)
    finish: Literal["stop", "length"] = "stop"
    if max_tokens is not None and max_tokens < len(body):
        body = body[:max_tokens]
        finish = "length"
    tokens = tuple(word if i == 0 else " " + word for i, word in enumerate(body))
    return Generation(tokens=tokens, text="".join(tokens), finish_reason=finish, good=good)


_PIECE = re.compile(r"\s*\S+")


def scripted(
    model: str,
    prompt: str,
    answer: ScriptedAnswer,
    *,
    seed: int,
    quality: float,
    max_tokens: int | None = None,
    index: int = 0,
) -> Generation:
    """The answer of ``model`` to a prompt of the answer key: the right answer with probability
    ``quality`` (decided by `answer_is_good`, so deterministic), else the wrong one."""
    good = answer_is_good(model, prompt, seed, quality, index)
    text = answer.answer if good else answer.wrong
    pieces = _PIECE.findall(text) or [text]
    finish: Literal["stop", "length"] = "stop"
    if max_tokens is not None and max_tokens < len(pieces):
        pieces = pieces[:max_tokens]
        finish = "length"
    return Generation(tokens=tuple(pieces), text="".join(pieces), finish_reason=finish, good=good)
