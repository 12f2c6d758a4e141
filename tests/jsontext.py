"""Hypothesis strategies that write raw JSON text, the way a hostile client can: any spelling of
a string (`\\u` escapes in either case, short escapes, `\\/`), any whitespace, repeated keys,
and a `model` nested in other objects or inside strings. Nothing here goes through a JSON
serialiser, so the bodies are not limited to what one would write.

`parse_pairs` is the reference reading: Python's stdlib parser, which keeps the last of
repeated keys as vLLM (FastAPI, pydantic) does, with the top-level pairs as written.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
          "\r": "\\r", "\t": "\\t"}  # fmt: skip

WHITESPACE = st.sampled_from(["", "", "", " ", "\n", "\t", "  ", "\r\n  "])


@st.composite
def spelled(draw: st.DrawFn, text: str) -> str:
    """One of the JSON string literals of `text`, each character spelled plainly or escaped."""
    plain = draw(st.booleans())  # half of the strings as most clients write them
    out = ['"']
    for ch in text:
        code = ord(ch)
        ways: list[str] = []
        if ch not in '"\\' and code >= 0x20:
            ways.append(ch)
        if ch in _SHORT:
            ways.append(_SHORT[ch])
        if code <= 0xFFFF:
            ways.append(f"\\u{code:04x}")
            ways.append(f"\\u{code:04X}")
        else:  # a surrogate pair
            hi, lo = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            ways.append(f"\\u{hi:04x}\\u{lo:04x}")
        out.append(ways[0] if plain else draw(st.sampled_from(ways[:1] * 3 + ways)))
    out.append('"')
    return "".join(out)


def string(text_strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A JSON string literal of a text drawn from `text_strategy`, in any spelling."""
    return text_strategy.flatmap(spelled)


# Texts that look like what the gateway reads, to end up inside strings and nested objects.
DECOY_TEXTS = st.sampled_from(
    ["model", "support-bot", '"model":"support-bot"', '{"model": "x"}', "stream", "user",
     "stream_options", "a/b", "\\u006d", "ünïcødé", "😀", "C:\\users"]
)  # fmt: skip
TEXTS = DECOY_TEXTS | st.text(max_size=8)
NUMBERS = st.sampled_from(["0", "-0", "1", "42", "1.5", "-2.5e3", "1E-2", "12345678901"])
SCALARS = NUMBERS | st.sampled_from(["true", "false", "null"]) | string(TEXTS)


def obj(members: list[tuple[str, str]], ws: list[str]) -> str:
    """An object of (key literal, value text) members, `ws` whitespace between tokens."""
    if not members:
        return "{" + ws[0] + "}"
    parts = [f"{ws[i % len(ws)]}{k}{ws[(i + 1) % len(ws)]}:{ws[(i + 2) % len(ws)]}{v}"
             for i, (k, v) in enumerate(members)]  # fmt: skip
    return "{" + ",".join(parts) + ws[-1] + "}"


def _nested(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    keys = string(TEXTS | st.just("model"))
    objects = st.builds(
        obj, st.lists(st.tuples(keys, inner), max_size=3), st.lists(WHITESPACE, min_size=1)
    )
    arrays = st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")
    return objects | arrays


VALUES = st.recursive(SCALARS, _nested, max_leaves=6)


def parse_pairs(raw: str | bytes) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The top-level pairs as written and the stdlib's (last-wins) reading of the body."""
    pairs: list[list[tuple[str, Any]]] = []

    def hook(items: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs.append(items)
        return dict(items)

    data = json.loads(raw, object_pairs_hook=hook)
    return pairs[-1] if isinstance(data, dict) else [], data


# -- chat request bodies ------------------------------------------------------------------------


def _options(ws: list[str]) -> st.SearchStrategy[str]:
    usage = st.sampled_from(["true", "false", "null", "1", '"yes"'])
    members = st.lists(
        st.tuples(string(st.sampled_from(["include_usage", "include_usage", "x"])), usage),
        max_size=2,
    )
    return st.builds(obj, members, st.just(ws))


def field_values(alias: str) -> dict[str, st.SearchStrategy[str]]:
    """Value texts, valid and not, of the fields the gateway reads, by field name."""
    ws = [" ", ""]
    nested_model = obj([('"model"', f'"{alias}"')], ws)
    return {
        "model": string(st.just(alias))
        | st.sampled_from(['"other-model"', '""', "1", "null", f'["{alias}"]', nested_model]),
        "stream": st.sampled_from(["true", "false", "null", "1", "0", '"true"', "[]"]),
        "stream_options": st.sampled_from(["null", '"x"', "[]", "1"]) | _options(ws),
        "user": string(st.sampled_from(["u1", "u2", "ünï", "a|b", ""]))
        | st.sampled_from(["null", "5", '{"id": "u1"}']),
        "messages": st.lists(
            st.builds(
                obj,
                st.lists(st.tuples(string(TEXTS | st.just("model")), VALUES), max_size=3),
                st.just(ws),
            ),
            max_size=3,
        ).map(lambda items: "[" + ",".join(items) + "]"),
        "max_tokens": NUMBERS,
    }


@st.composite
def request_bodies(draw: st.DrawFn, alias: str) -> str:
    """A chat request body as raw text: the gateway's fields with valid and invalid values,
    keys spelled any way and sometimes repeated, decoys nested and inside strings."""
    values = field_values(alias)
    unique = draw(st.booleans())  # half without repeats, so that most of those are accepted
    names = draw(st.lists(st.sampled_from(sorted(values)), max_size=5, unique=unique))
    if draw(st.integers(0, 4)) and not (unique and "model" in names):
        names.insert(draw(st.integers(0, len(names))), "model")  # usually a valid model
    members: list[tuple[str, str]] = []
    for name in names:
        value = string(st.just(alias)) if name == "model" and not members else values[name]
        members.append((draw(spelled(name)), draw(value)))
    return draw(WHITESPACE) + obj(members, draw(st.lists(WHITESPACE, min_size=1, max_size=4)))
