"""Byte-exact edits of a JSON request body, and the check that its top-level keys are unique.

The gateway forwards the client's body byte for byte except the deliberate rewrites (the
`model` of the chosen arm, and asking for usage on streams). Rebuilding the body from a schema
would drop vLLM's extension fields and change number formatting, so instead the value spans of
top-level members are located and replaced.

One parse, one truth: the gateway routes on orjson's parse, and a model server may read a
repeated key differently (first or last wins), so a body whose top-level keys are not unique is
refused (`check_members`). Two ways to prove them unique:

- **Fast** (the common body: plain keys such as `model`, `messages`, `max_tokens`). A key of
  letters, digits, `_` and `-` written without a `\\u` escape has one spelling, ``"key"``.
  When no key anywhere in the body holds a `\\u` escape, one C-level regular-expression pass
  finds every occurrence of the parsed keys' literals; if there are exactly as many as keys, each
  key is written once, and its one occurrence is the member itself. No literal can hide another:
  a literal's quote that is no escape is a string's opening or closing quote, the byte before a
  key's opening quote is `{`, `,` or whitespace and the byte after a closing quote never is a
  letter, digit, `_` or `-`.
  The pattern is compiled once per set of keys, and compiling costs more than the scan it
  saves (~0.05 to 1 ms), so it is compiled only for a key set that comes back: a set seen for
  the first time is scanned (`_Literals`).
- **Full scan** otherwise: one pass of a C-level regular expression over the structural tokens
  (strings and brackets; numbers and literals need no tokens), decoding escaped keys. A literal
  that merely occurs twice (`{"role": "model"}` in a message) only costs this scan.

The body must already have been parsed successfully (valid JSON with an object at the top).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from router.errors import InvalidRequest

# A JSON string (unrolled: runs of plain bytes are matched in one step) or a structural byte.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]', re.DOTALL)
# The rest of a string from a backslash inside it: see `_escaped_key`.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# A string value after its key (the colon, then the string)
_STRING_VALUE = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*("[^"\\]*(?:\\.[^"\\]*)*")', re.DOTALL)
# The next bracket inside a nested value, past the strings, other bytes and containers up to
# two levels deep before it (a message object, its list of content parts) in one C-level match.
_STR = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_FLAT = rb'[\[{](?:[^"\[\]{}]++|' + _STR + rb")*+[\]}]"
_TWO = rb'[\[{](?:[^"\[\]{}]++|' + _STR + b"|" + _FLAT + rb")*+[\]}]"
_NEXT_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|' + _STR + b"|" + _TWO + rb")*+[\[\]{}]", re.DOTALL)
_BACKSLASH_U = re.compile(rb"\\u")
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")  # between a key and its value
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FAST_KEYS = 32  # more top-level keys than this: scanned
_ESCAPED_STRINGS = 16  # more strings with a `\u` than this: scanned
MAX_MEMBERS = 1024  # top-level keys of a request body, at most (bounds the scan's work)
_MODEL = b'"model"'
_WS = b" \t\r\n"
_USAGE_ON = b'"stream_options":{"include_usage":true}'
_SHOWN = 64  # characters of a repeated key named in the error

Span = tuple[int, int]


class Members:
    """Where the top-level members of a body whose keys were proved unique are.

    `spans` is None on the fast path: `model`'s value is then found from its key's one
    occurrence (`model_at`), anything else by a full scan when first needed."""

    __slots__ = ("model_at", "raw", "spans")

    def __init__(self, raw: bytes, spans: dict[str, Span] | None, model_at: int = -1) -> None:
        self.raw = raw
        self.spans = spans
        self.model_at = model_at

    def span(self, key: str) -> Span | None:
        """The span ``[start, end)`` of the value of top-level `key`; None when absent."""
        if self.spans is None:
            if key == "model" and self.model_at >= 0:
                quick = _string_after(self.raw, self.model_at + len(_MODEL))
                if quick is not None:
                    return quick
            self.spans = top_level_members(self.raw)
        return self.spans.get(key)


def check_members(raw: bytes, data: dict[str, Any]) -> Members:
    """Prove the top-level keys of `raw` (parsed as `data`) unique; a repeated key is the
    client's error (400, `param` names the key), and so are more than `MAX_MEMBERS` keys."""
    if len(data) > MAX_MEMBERS:
        raise InvalidRequest(
            f"the request body has {len(data)} top-level keys; this gateway accepts at most "
            f"{MAX_MEMBERS}"
        )
    model_at = _fast_proof(raw, data)
    if model_at is not None:
        return Members(raw, None, model_at)
    return Members(raw, top_level_members(raw))


def _fast_proof(raw: bytes, data: dict[str, Any]) -> int | None:
    """The fast proof (module docstring): where the `model` key's literal is (-1: no `model`),
    or None when the proof cannot be made and the body must be scanned."""
    if len(data) > _FAST_KEYS:
        return None
    literals = _LITERALS.get(frozenset(data))
    if literals is None:
        return None
    at = raw.find(b"\\")  # memchr: most bodies have no escape at all
    if at >= 0 and _escaped_key(raw, at):
        return None
    if len(literals.findall(raw)) != len(data):
        return None
    return raw.find(_MODEL) if "model" in data else -1  # the one occurrence


class _Literals:
    """The fast proof's patterns, one per set of keys, compiled only for key sets that come
    back, so that a client cannot make the gateway compile a pattern per request.

    A client sends the same keys request after request; a hostile one can send a new set of up
    to 32 plain keys every time, and compiling its pattern (up to ~1 ms) costs far more than
    the full scan (~20 to 100 us for 2 to 5 KB). So a key set not cached is answered by the
    scan and only counted (by its hash, in the last `recent` such misses: a key may be
    megabytes long); on its `sightings`-th miss it is compiled, when the compile budget allows:
    `per_second` compiles, `burst` at once. A key set that is not plain is remembered as such
    in the same counter. Compiled patterns are kept for the `capacity` key sets used last.
    What a thrasher can cost: the scan per request, and at most `per_second` compiles a second
    in all; a steady client's key set is compiled on its second request and then stays cached
    while it is in use."""

    __slots__ = (
        "_at",
        "_burst",
        "_capacity",
        "_clock",
        "_patterns",
        "_per_second",
        "_recent",
        "_recent_max",
        "_sightings",
        "_tokens",
    )

    def __init__(
        self,
        *,
        capacity: int = 256,
        recent: int = 1024,
        sightings: int = 2,
        per_second: float = 16.0,
        burst: float = 32.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._patterns: OrderedDict[frozenset[str], re.Pattern[bytes]] = OrderedDict()
        self._recent: OrderedDict[int, int] = OrderedDict()  # hash: misses; -1: not plain
        self._capacity = capacity
        self._recent_max = recent
        self._sightings = sightings
        self._per_second = per_second
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._at = clock()

    def get(self, keys: frozenset[str]) -> re.Pattern[bytes] | None:
        """The pattern for the literals of `keys`; None: scan the body instead."""
        try:
            pattern = self._patterns[keys]
            self._patterns.move_to_end(keys)
        except KeyError:
            return self._miss(keys)
        return pattern

    def _miss(self, keys: frozenset[str]) -> re.Pattern[bytes] | None:
        recent = self._recent
        digest = hash(keys)  # a collision only compiles a key set sooner: within the budget
        seen = recent.pop(digest, 0)
        if seen >= 0:
            seen += 1
            if seen >= self._sightings:
                if not all(_PLAIN_KEY.fullmatch(k) for k in keys):
                    seen = -1
                elif self._take():
                    pattern = _compile(keys)
                    self._patterns[keys] = pattern
                    if len(self._patterns) > self._capacity:
                        self._patterns.popitem(last=False)
                    return pattern
        recent[digest] = seen
        if len(recent) > self._recent_max:
            recent.popitem(last=False)
        return None

    def _take(self) -> bool:
        """One compile from the budget, if there is one left."""
        now = self._clock()
        if self._tokens < self._burst:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _compile(keys: Iterable[str]) -> re.Pattern[bytes]:
    """One pattern for the literals of these plain keys (their order does not matter: each
    alternative is closed by a quote that no plain key holds)."""
    return re.compile(b'"(?:' + b"|".join(k.encode() for k in sorted(keys)) + b')"')


_LITERALS = _Literals()


def _escaped_key(raw: bytes, at: int) -> bool:
    """Whether a string holding the bytes ``\\u`` is followed by a colon (is a key, at any
    depth); `at` is the first backslash. Each such string is read once from its first ``\\u``
    to its end: linear.

    A backslash is always inside a string. Reading escapes from the found backslash gives the
    string's true end whether or not that backslash starts an escape (when it ends a ``\\\\``
    pair, the next byte is a plain ``u`` and both readings agree from the byte after it)."""
    found = _BACKSLASH_U.search(raw, at)
    for _ in range(_ESCAPED_STRINGS):
        if found is None:
            return False
        rest = _STRING_REST.match(raw, found.start())
        if rest is None or _COLON.match(raw, rest.end()):
            return True  # (None: not valid JSON; cannot happen after a successful parse)
        found = _BACKSLASH_U.search(raw, rest.end())
    return found is not None  # many escaped strings: the scan passes over them in C


def _string_after(raw: bytes, key_end: int) -> Span | None:
    """The span of the string value whose key ends at `key_end`; None if it is no string."""
    value = _STRING_VALUE.match(raw, key_end)
    return None if value is None else value.span(1)


def top_level_members(body: bytes) -> dict[str, Span]:
    """Spans ``[start, end)`` of the values of every top-level member, by decoded key.

    A key written with escapes is decoded; a key that occurs twice is refused (400). Inside a
    nested value only its brackets are visited, each found by one C-level match that passes
    over the strings and other bytes before it."""
    found: dict[str, Span] = {}
    depth = 0
    expect_key = False
    pending: str | None = None  # key whose value starts after the next ':'
    value_start = pos = 0
    while True:
        if depth > 1:
            bracket = _NEXT_BRACKET.match(body, pos)
            if bracket is None:  # not valid JSON; cannot happen after a successful parse
                break
            pos = bracket.end()
            depth += 1 if body[pos - 1] in b"[{" else -1
            continue
        m = _TOKENS.search(body, pos)
        if m is None:
            break
        pos = m.end()
        tok = m.group()
        c = tok[0]
        if c == 0x22:  # '"'
            if depth == 1 and expect_key:
                expect_key = False
                pending = orjson.loads(tok) if b"\\" in tok else tok[1:-1].decode()
                if pending in found:
                    raise _repeated(pending)
        elif c == 0x3A:  # ':'
            value_start = pos
        elif c in (0x7B, 0x5B):  # '{' '['
            depth += 1
            expect_key = depth == 1 and c == 0x7B
        else:  # ',' or the top-level object's closing brace
            if pending is not None:
                found[pending] = _trimmed(body, value_start, m.start())
                pending = None
            if c != 0x2C:
                break
            expect_key = True
    return found


def _trimmed(body: bytes, start: int, end: int) -> Span:
    while start < end and body[start] in _WS:
        start += 1
    while end > start and body[end - 1] in _WS:
        end -= 1
    return start, end


def _repeated(key: str) -> InvalidRequest:
    shown = key if len(key) <= _SHOWN else key[:_SHOWN] + "..."
    return InvalidRequest(
        f"the request body has the top-level key `{shown}` more than once; send each key once",
        param=shown,
    )


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
    members: Members,
    *,
    stream: bool,
    client_wants_usage: bool,
    model_json: bytes | None,
    has_options: bool,
) -> bytes:
    """The body to forward: `model` rewritten to `model_json` (None: kept) and, on streams
    whose client did not ask for it, the usage chunk requested.

    `has_options`: the parsed body has a top-level `stream_options` (an object or null)."""
    raw = members.raw
    ask_usage = stream and not client_wants_usage
    if model_json is None and not ask_usage:
        return raw
    edits: list[tuple[int, int, bytes]] = []
    if model_json is not None:
        span = members.span("model")
        if span is None:  # cannot happen: the plan checked that `model` is there
            raise InvalidRequest("you must provide a model parameter (a string)", param="model")
        edits.append((*span, model_json))
    if ask_usage:
        span = members.span("stream_options") if has_options else None
        if span is not None:
            opts = orjson.loads(raw[span[0] : span[1]])
            opts = dict(opts) if isinstance(opts, dict) else {}
            opts["include_usage"] = True
            edits.append((*span, orjson.dumps(opts)))
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
