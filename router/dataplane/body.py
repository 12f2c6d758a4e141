"""Byte-exact edits of a JSON request body.

The gateway forwards the client's body byte for byte except the deliberate rewrites (the
`model` of the chosen arm, and asking for usage on streams). Rebuilding the body from a schema
would drop vLLM's extension fields and change number formatting, so instead the top-level
members are located with one pass of a C-level regular expression over the structural tokens
(strings and brackets; numbers and literals need no tokens), and the value spans are replaced.
The body must already have been parsed successfully (it is valid JSON with an object at the top).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

# A JSON string (unrolled: runs of plain bytes are matched in one step) or a structural byte.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]', re.DOTALL)
_WS = b" \t\r\n"
_MODEL_KEY = frozenset((b'"model"',))
_MODEL_AND_OPTIONS = frozenset((b'"model"', b'"stream_options"'))
_USAGE_ON = b'"stream_options":{"include_usage":true}'


def top_level_spans(body: bytes, keys: frozenset[bytes]) -> dict[bytes, tuple[int, int]]:
    """Spans ``[start, end)`` of the values of the wanted top-level keys.

    `keys` are JSON string literals as they appear unescaped, e.g. ``b'"model"'``. A key
    written with escapes is decoded before comparison. Stops as soon as all keys were found.
    """
    found: dict[bytes, tuple[int, int]] = {}
    depth = 0
    expect_key = False
    pending: bytes | None = None  # key whose value starts after the next ':'
    value_start = -1
    for m in _TOKENS.finditer(body):
        tok = m.group()
        c = tok[0]
        if c == 0x22:  # '"'
            if depth == 1 and expect_key:
                expect_key = False
                name = tok if b"\\" not in tok else orjson.dumps(orjson.loads(tok))
                pending = name if name in keys else None
            continue
        if c == 0x3A:  # ':'
            if depth == 1 and pending is not None:
                value_start = m.end()
            continue
        if c in (0x7B, 0x5B):  # '{' '['
            depth += 1
            if depth == 1:
                expect_key = c == 0x7B
            continue
        if c in (0x7D, 0x5D) and depth > 1:  # closing a nested value
            depth -= 1
            continue
        # ',' at any depth, or the closing bracket of the top-level object
        if depth == 1 and pending is not None and value_start >= 0:
            start, end = value_start, m.start()
            while start < end and body[start] in _WS:
                start += 1
            while end > start and body[end - 1] in _WS:
                end -= 1
            found[pending] = (start, end)
            pending = None
            value_start = -1
            if len(found) == len(keys):
                return found
        if c == 0x2C:
            if depth == 1:
                expect_key = True
        else:
            depth -= 1
    return found


def model_span(body: bytes, alias: bytes) -> tuple[int, int] | None:
    """Span of the top-level `model` value when it can be found without a scan: the body holds
    exactly one `"model": <alias>` (the top-level member is there, so a single match is it).
    `alias` is the JSON string literal; None means: use `top_level_spans`."""
    found = None
    start = 0
    while (at := body.find(b'"model"', start)) >= 0:
        start = at + 7
        i = start
        while i < len(body) and body[i] in b" \t\r\n":
            i += 1
        if i >= len(body) or body[i] != 0x3A:  # ':'
            continue
        i += 1
        while i < len(body) and body[i] in b" \t\r\n":
            i += 1
        if body.startswith(alias, i):
            if found is not None:
                return None  # more than one: let the scanner decide
            found = (i, i + len(alias))
    return found


def closing_brace(body: bytes) -> int:
    """Index of the top-level object's closing brace."""
    return body.rindex(b"}")


def rewrite(body: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Apply non-overlapping ``(start, end, replacement)`` edits."""
    if not edits:
        return body
    out: list[bytes] = []
    pos = 0
    for start, end, repl in sorted(edits):
        out.append(body[pos:start])
        out.append(repl)
        pos = end
    out.append(body[pos:])
    return b"".join(out)


def edit_request(
    raw: bytes,
    *,
    stream: bool,
    client_wants_usage: bool,
    model_json: bytes | None,
    has_options: bool,
    alias: bytes | None = None,
) -> bytes:
    """The body to forward: `model` rewritten to `model_json` (None: kept) and, on streams
    whose client did not ask for it, the usage chunk requested.

    `has_options`: the parsed body has a top-level `stream_options`; `alias`: the client's
    `model` as a JSON string literal, for the scan-free fast path (`model_span`)."""
    if model_json is None and (not stream or client_wants_usage):
        return raw
    # look only for the keys that are there, so the scan can stop at the last one it needs
    need_options = stream and not client_wants_usage and has_options
    quick = None if need_options or alias is None else model_span(raw, alias)
    if quick is not None:
        spans = {b'"model"': quick}
    else:
        spans = top_level_spans(raw, _MODEL_AND_OPTIONS if need_options else _MODEL_KEY)
    edits: list[tuple[int, int, bytes]] = []
    if model_json is not None:
        start, end = spans[b'"model"']
        edits.append((start, end, model_json))
    if stream and not client_wants_usage:
        span = spans.get(b'"stream_options"')
        if need_options and span is not None:
            start, end = span
            opts = orjson.loads(raw[start:end])
            opts = dict(opts) if isinstance(opts, dict) else {}
            opts["include_usage"] = True
            edits.append((start, end, orjson.dumps(opts)))
        else:
            brace = closing_brace(raw)
            edits.append((brace, brace, b"," + _USAGE_ON))
    return rewrite(raw, edits)


_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def prompt_fingerprint(data: dict[str, Any]) -> str:
    """Fingerprint of the last user message (chat) or the prompt (completions), normalised
    (case, whitespace and punctuation folded) so that a re-sent prompt matches."""
    text: object = None
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                text = message.get("content")
                break
    else:
        text = data.get("prompt")
    if isinstance(text, list):  # content parts, or a list of prompts
        text = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in text)
    if not isinstance(text, str) or not text:
        return ""
    normalised = " ".join(_PUNCT.sub(" ", text.casefold()).split())
    return hashlib.blake2b(normalised.encode(), digest_size=8).hexdigest()
