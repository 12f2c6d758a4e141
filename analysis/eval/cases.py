"""Eval cases: parsing a suite's JSONL, normalised text, content hashes, contamination checks.

Everything here takes text and returns values; the caller reads the files.

- `parse_cases` reads one case per non-blank line (see `analysis.eval.types` for the shape).
- `normalise_text` is the one normalisation used for hashing and contamination:

  1. Unicode NFKC (full-width letters, ligatures and compatibility forms become plain ones);
  2. ``str.casefold`` (a stronger ``lower``: "Straße" and "STRASSE" compare equal);
  3. every run of whitespace (``str.isspace``: spaces, tabs, newlines, NBSP...) becomes one
     space;
  4. whitespace and Unicode punctuation (general category P*: ``.,;:!?'"()[]{}-*_`` and
     their Unicode relatives such as «» and …) are stripped from both ends, repeatedly, so
     "  Hello, world!! " becomes "hello, world" — except ``% ‰ # @ & / \\``, which carry
     meaning ("50%", "C#"). Punctuation inside the text and symbols (category S*:
     ``$ + = < >``...) are kept.

- `case_hash` / `fingerprint` identify a suite's content independently of line order, ids,
  formatting and letter case, so a result can be tied to exactly the cases it was run on.
- `find_contamination` reports eval cases whose input appears (exactly or nearly) in the
  training data; `train_texts_from_jsonl` extracts those inputs from common fine-tune formats.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError
from rapidfuzz import fuzz, process

from analysis.eval.types import ContaminationHit, EvalCase, EvalInputError

__all__ = [
    "EvalInputError",
    "case_hash",
    "case_text",
    "contamination_within",
    "find_contamination",
    "fingerprint",
    "normalise_text",
    "parse_cases",
    "strip_edge_punctuation",
    "train_texts_from_jsonl",
]

_CASE_KEYS = frozenset({"id", "input", "expected", "reference", "metadata"})
# Cells of one similarity block of the near-duplicate search (float32: 64 MiB at most).
_BLOCK_CELLS = 16_000_000


def _lines(text: str) -> list[str]:
    """Physical lines, numbered as an editor would. Only "\\n" ends a line: JSON strings may
    hold U+2028 and other characters that ``str.splitlines`` would split on."""
    return [line.rstrip("\r") for line in text.removeprefix("\ufeff").split("\n")]


def _json_object(line: str, source: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvalInputError(
            f"{source}:{number}: not valid JSON ({exc.msg} at column {exc.colno})",
            source=source,
            line=number,
        ) from exc
    if not isinstance(value, dict):
        raise EvalInputError(
            f"{source}:{number}: expected a JSON object, got {type(value).__name__}",
            source=source,
            line=number,
        )
    return value


def _validation_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    return "; ".join(parts)


def parse_cases(text: str, source: str) -> list[EvalCase]:
    """Parse a suite's JSONL: one case per non-blank line.

    Known keys are ``id`` (a non-empty string; an integer is turned into its decimal string),
    ``input`` (chat messages or a prompt string), ``expected``, ``reference`` and
    ``metadata``. Every other top-level key goes into ``fields``; a top-level ``fields`` object
    is merged into it, so ``EvalCase.model_dump_json()`` lines parse back to equal cases.

    Raises `EvalInputError` naming ``source``, the 1-based line number and the problem: a line
    that is not a JSON object, a missing or empty ``id`` or ``input``, a malformed message, a
    duplicate id (with the line of its first use), or a file without any case.
    """
    cases: list[EvalCase] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        obj = _json_object(line, source, number)

        def fail(problem: str, number: int = number) -> EvalInputError:
            return EvalInputError(f"{source}:{number}: {problem}", source=source, line=number)

        raw_id = obj.get("id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or not raw_id.strip():
            raise fail("missing or empty 'id' (a non-empty string)")
        if obj.get("input") in (None, "", []):
            raise fail(f"case {raw_id!r}: missing or empty 'input'")
        if raw_id in first_line:
            raise fail(f"duplicate id {raw_id!r} (first used on line {first_line[raw_id]})")
        fields: dict[str, Any] = {}
        extra = obj.get("fields")
        if extra is not None:
            if not isinstance(extra, dict):
                raise fail(f"case {raw_id!r}: 'fields' must be an object")
            fields.update(extra)
        fields.update({k: v for k, v in obj.items() if k not in _CASE_KEYS and k != "fields"})
        known = {k: v for k, v in obj.items() if k in _CASE_KEYS}
        known["id"] = raw_id
        try:
            case = EvalCase.model_validate({**known, "fields": fields})
        except ValidationError as exc:
            raise fail(f"case {raw_id!r}: {_validation_problem(exc)}") from exc
        first_line[raw_id] = number
        cases.append(case)
    if not cases:
        raise EvalInputError(f"{source}: no cases (the file is empty)", source=source)
    return cases


_KEEP_AT_ENDS = frozenset("%\u2030#@&/\\")


def _strippable(ch: str) -> bool:
    return ch.isspace() or (unicodedata.category(ch)[0] == "P" and ch not in _KEEP_AT_ENDS)


def strip_edge_punctuation(s: str) -> str:
    """Strip whitespace and punctuation from both ends (rule 4 of the module docstring)."""
    start, end = 0, len(s)
    while start < end and _strippable(s[start]):
        start += 1
    while end > start and _strippable(s[end - 1]):
        end -= 1
    return s[start:end]


def normalise_text(s: str) -> str:
    """NFKC, casefold, collapse whitespace, strip punctuation and whitespace at both ends (see
    the module docstring for the exact rules)."""
    return strip_edge_punctuation(" ".join(unicodedata.normalize("NFKC", s).casefold().split()))


def case_text(case: EvalCase, *, roles: Collection[str] | None = None) -> str:
    """The case's input as one string: the prompt, or the messages' contents joined by a
    newline. With ``roles`` only messages of those roles are joined (all of them when none of
    the messages has such a role)."""
    if isinstance(case.input, str):
        return case.input
    messages = case.input
    if roles is not None:
        chosen = [m for m in messages if m.role in roles]
        messages = chosen or messages
    return "\n".join(m.content for m in messages)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def case_hash(case: EvalCase) -> str:
    """sha256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of::

        {"input": <normalised prompt> | [[role, <normalised content>], ...],
         "expected": <expected as given>, "fields": <fields as given>}

    plus ``"reference"`` when the case has one. The id and ``metadata`` are left out: renaming
    a case or retagging it does not change what is measured; changing its input (beyond case
    and spacing), its expected answer, its reference (an LLM judge is shown it) or its
    grader-specific fields (a pattern, a schema) does.
    """
    if isinstance(case.input, str):
        norm_input: Any = normalise_text(case.input)
    else:
        norm_input = [[m.role, normalise_text(m.content)] for m in case.input]
    payload = {"input": norm_input, "expected": case.expected, "fields": case.fields}
    if case.reference is not None:
        payload["reference"] = case.reference
    return hashlib.sha256(_canonical(payload)).hexdigest()


def fingerprint(cases: Sequence[EvalCase]) -> str:
    """sha256 (hex) over the sorted case hashes, one per line: independent of case order."""
    joined = "\n".join(sorted(case_hash(c) for c in cases))
    return hashlib.sha256(joined.encode()).hexdigest()


def _message_text(content: Any) -> str | None:
    """A chat message's text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts) if parts else None
    return None


def _user_text(messages: Any) -> str | None:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    texts = [_message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    kept = [t for t in texts if t is not None]
    return "\n".join(kept) if kept else None


def train_texts_from_jsonl(text: str, source: str = "training data") -> list[str]:
    """The input text of each line of a fine-tuning JSONL file, one string per physical line
    (an empty string for a blank line), so ``result[i]`` belongs to line ``i + 1``.

    Recognised shapes, tried in this order:

    - ``{"messages": [...]}`` (OpenAI chat fine-tuning): the user messages' contents joined by
      a newline (text parts of content lists included);
    - ``{"prompt": "...", "completion": "..."}``: the prompt;
    - ``{"input": "..."}`` or ``{"input": [messages]}``: the string, or the user messages;
    - ``{"text": "..."}``: the whole text (prompt and answer together, so near-duplicate scores
      against it are lower than for the other shapes).

    Raises `EvalInputError` with the line number for invalid JSON or an unrecognised line.
    """
    texts: list[str] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            texts.append("")
            continue
        obj = _json_object(line, source, number)
        found: str | None = None
        if "messages" in obj:
            found = _user_text(obj["messages"])
        elif isinstance(obj.get("prompt"), str):
            found = obj["prompt"]
        elif "input" in obj:
            value = obj["input"]
            found = value if isinstance(value, str) else _user_text(value)
        elif isinstance(obj.get("text"), str):
            found = obj["text"]
        if found is None:
            keys = ", ".join(sorted(obj)) or "none"
            raise EvalInputError(
                f"{source}:{number}: unrecognised training line (keys: {keys}); expected "
                "'messages' with user messages, 'prompt', 'input' or 'text'",
                source=source,
                line=number,
            )
        texts.append(found)
    return texts


def find_contamination(
    eval_cases: Sequence[EvalCase],
    train_texts: Sequence[str],
    near_threshold: float = 0.9,
    *,
    workers: int = 1,
) -> list[ContaminationHit]:
    """Eval cases whose input also appears in the training texts, at most one hit per case, in
    the order of ``eval_cases``.

    Both sides are compared as `normalise_text` of their user-visible input (for chat cases the
    user messages, as `train_texts_from_jsonl` extracts them). A case is an *exact* hit (score
    1.0) when its normalised text equals a training text's; otherwise a *near* hit when
    rapidfuzz ``fuzz.ratio`` (normalised Indel similarity, 0-100) with some training text is at
    least ``near_threshold * 100``: the best-scoring training text is reported (the first
    one on ties). Cases and training texts that normalise to "" are ignored.

    What the ratio means in practice: short templated prompts that differ in a character or
    two ("... of Country 1?" / "... of Country 7?") are near-duplicates at 0.9, which is
    right when the template itself leaked and noisy otherwise (raise the threshold, or set
    1.0 for exact matches only); a training text that embeds the eval prompt in much longer
    text scores low, since whole strings are compared.

    The near search is ``rapidfuzz.process.cdist`` in blocks of training texts, so memory
    stays bounded (about 64 MiB) for thousands × tens of thousands of texts; ``workers`` is
    passed to cdist (-1: all cores).
    """
    if not 0.0 < near_threshold <= 1.0:
        raise EvalInputError(f"near_threshold must be in (0, 1], got {near_threshold}")
    train_norm = [normalise_text(t) for t in train_texts]
    exact_index: dict[str, int] = {}
    for i, t in enumerate(train_norm):
        if t:
            exact_index.setdefault(t, i)
    hits: dict[int, ContaminationHit] = {}
    pending: list[tuple[int, str]] = []
    for pos, case in enumerate(eval_cases):
        norm = normalise_text(case_text(case, roles=("user",)))
        if not norm:
            continue
        if norm in exact_index:
            hits[pos] = ContaminationHit(
                case_id=case.id, kind="exact", score=1.0, train_index=exact_index[norm]
            )
        else:
            pending.append((pos, norm))
    candidates = [(i, t) for i, t in enumerate(train_norm) if t]
    if pending and candidates and near_threshold < 1.0:
        queries = [q for _, q in pending]
        best_score = np.zeros(len(queries), dtype=np.float32)
        best_index = np.full(len(queries), -1, dtype=np.int64)
        block = max(1, _BLOCK_CELLS // len(queries))
        # 0.9 * 100 is 90.00000000000001 in binary: allow for that so a ratio of exactly 90
        # counts at a threshold of 0.9.
        cutoff = near_threshold * 100.0 - 1e-9
        for start in range(0, len(candidates), block):
            chunk = candidates[start : start + block]
            scores = process.cdist(
                queries,
                [t for _, t in chunk],
                scorer=fuzz.ratio,
                processor=None,
                score_cutoff=cutoff,
                dtype=np.float32,
                workers=workers,
            )
            col = scores.argmax(axis=1)
            top = scores[np.arange(len(queries)), col]
            better = top > best_score
            best_score[better] = top[better]
            best_index[better] = [chunk[c][0] for c in col[better]]
        for (pos, _), score, index in zip(pending, best_score, best_index, strict=True):
            if index >= 0:
                hits[pos] = ContaminationHit(
                    case_id=eval_cases[pos].id,
                    kind="near",
                    score=min(1.0, float(score) / 100.0),
                    train_index=int(index),
                )
    return [hits[pos] for pos in sorted(hits)]


def contamination_within(
    hits: Sequence[ContaminationHit], n_cases: int, max_fraction: float
) -> bool:
    """Whether the contaminated share of ``n_cases`` is at most ``max_fraction`` (the spec's
    ``contamination.max_fraction``; 0 means no contaminated case is tolerated). Hits are
    counted by distinct case id."""
    if n_cases <= 0:
        return True
    return len({h.case_id for h in hits}) / n_cases <= max_fraction
