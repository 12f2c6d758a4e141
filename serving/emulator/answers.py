"""Scripted answers: an *answer key* that makes the emulator answer known prompts correctly.

Offline evals need a model whose quality on a suite is known in advance. An answer key maps a
prompt to its right answer, grouped by *topic*; a model's profile gives its quality per topic
(``quality.<topic>=0.9``). When a request's prompt is in the key, the answer is the right one
with that probability (decided by the same hash as generated text, so it is deterministic per
model, prompt and seed) and otherwise the entry's wrong answer. Prompts not in the key get the
usual generated text.

A key file is JSON Lines, one entry per line, in either form:

- ``{"prompt": "...", "answer": "...", "wrong": "..."}`` (``wrong`` optional);
- an eval case (``{"id": ..., "input": [messages] or "prompt", "reference": "...",
  "expected": ...}``): the answer is ``reference``, or ``expected`` when it is a string.

Prompts are matched as the engine sees them (chat: every message content joined by newlines),
with whitespace collapsed and case folded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WRONG_ANSWER", "AnswerKey", "ScriptedAnswer", "load_answer_key", "prompt_key"]

#: What a model answers to a keyed prompt it gets wrong, unless the entry says otherwise.
DEFAULT_WRONG_ANSWER = "I am not sure about that, sorry."


def prompt_key(text: str) -> str:
    """The lookup form of a prompt: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class ScriptedAnswer:
    topic: str
    answer: str
    wrong: str


@dataclass(frozen=True, slots=True)
class AnswerKey:
    """Known prompts and their answers, by `prompt_key`."""

    entries: dict[str, ScriptedAnswer]

    def lookup(self, prompt: str) -> ScriptedAnswer | None:
        return self.entries.get(prompt_key(prompt)) if self.entries else None

    def merged(self, other: AnswerKey) -> AnswerKey:
        return AnswerKey({**self.entries, **other.entries})


def _prompt_of(entry: dict[str, Any], where: str) -> str:
    if "prompt" in entry:
        raw: Any = entry["prompt"]
    elif "input" in entry:
        raw = entry["input"]
    else:
        raise ValueError(f"{where}: an entry needs 'prompt' or 'input'")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in raw
    ):
        return "\n".join(m["content"] for m in raw)
    raise ValueError(f"{where}: 'input' must be a string or a list of messages with content")


def _answer_of(entry: dict[str, Any], where: str) -> str:
    for field in ("answer", "reference", "expected"):
        value = entry.get(field)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"{where}: an entry needs a string 'answer', 'reference' or 'expected'")


def load_answer_key(topic: str, path: Path) -> AnswerKey:
    """Read one key file for ``topic``.

    Raises:
        ValueError: the message names the file, the line and the problem.
    """
    if not topic:
        raise ValueError("an answer key needs a topic: TOPIC=FILE")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read answer key {path}: {exc.strerror}") from None
    entries: dict[str, ScriptedAnswer] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        wrong = entry.get("wrong", DEFAULT_WRONG_ANSWER)
        if not isinstance(wrong, str) or not wrong:
            raise ValueError(f"{where}: 'wrong' must be a non-empty string")
        entries[prompt_key(_prompt_of(entry, where))] = ScriptedAnswer(
            topic, _answer_of(entry, where), wrong
        )
    return AnswerKey(entries)
