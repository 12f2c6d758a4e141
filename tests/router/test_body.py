"""Byte-exact body edits: the located spans are exactly the top-level values, repeated top-level
keys are refused however they are spelled, and the fast proof agrees with the full scan, whether
its pattern is cached or the body's key set is new (and scanned)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.dataplane import body
from router.dataplane.body import (
    Members,
    _Literals,
    check_members,
    edit_request,
    rewrite,
    top_level_members,
)
from router.errors import InvalidRequest
from tests.jsontext import VALUES, WHITESPACE, obj, parse_pairs, spelled, string

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
)


@contextmanager
def _patterns(literals: _Literals) -> Iterator[_Literals]:
    """The fast proof's pattern cache replaced by `literals` for a while."""
    kept = body._LITERALS
    body._LITERALS = literals
    try:
        yield literals
    finally:
        body._LITERALS = kept


def _checked(raw: bytes, literals: _Literals) -> Members:
    with _patterns(literals):
        return check_members(raw, orjson.loads(raw))


def _members(raw: bytes) -> Members:
    """The checked members of `raw` on the cached route: the key set's pattern is compiled at
    first sight, as for a key set that came back."""
    return _checked(raw, _Literals(sightings=1, burst=1e9))


def _uncached(raw: bytes) -> Members:
    """The same for a key set never seen before (no pattern compiled: the body is scanned)."""
    return _checked(raw, _Literals(burst=0))


def _slow(raw: bytes) -> Members:
    """The same, always by the full scan."""
    return Members(raw, top_level_members(raw))


def _edit(
    raw: bytes | Members,
    *,
    stream: bool = False,
    model_json: bytes | None = None,
    has_options: bool = False,
) -> bytes:
    """`edit_request` for a client that did not ask for usage itself."""
    return edit_request(
        raw if isinstance(raw, Members) else _members(raw),
        stream=stream,
        client_wants_usage=False,
        model_json=model_json,
        has_options=has_options,
    )


def _refused_key(raw: bytes) -> str | None:
    """The key named by the 400 for `raw`, or None when it is accepted (the same on the cached
    and the uncached route)."""
    named: list[str | None] = []
    for route in (_members, _uncached):
        try:
            route(raw)
        except InvalidRequest as exc:
            assert exc.status == 400 and exc.type == "invalid_request_error"
            assert f"`{exc.param}` more than once" in exc.message
            named.append(exc.param)
        else:
            named.append(None)
    assert named[0] == named[1]
    return named[0]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(), values, max_size=6),
    st.text(),
    st.booleans(),
    st.sampled_from([None, ", ", ",\n  "]),
)
def test_spans_locate_top_level_values(
    doc: dict[str, object], model: str, model_first: bool, sep: str | None
) -> None:
    doc = {k: v for k, v in doc.items() if k != "model"}
    items = [("model", model), *doc.items()] if model_first else [*doc.items(), ("model", model)]
    ordered = dict(items)
    raw = (json.dumps(ordered, separators=(sep, ": ")) if sep else json.dumps(ordered)).encode()
    spans = top_level_members(raw)
    assert set(spans) == set(ordered)
    for key, (start, end) in spans.items():
        assert orjson.loads(raw[start:end]) == orjson.loads(orjson.dumps(ordered[key]))
    start, end = spans["model"]
    replaced = rewrite(raw, [(start, end, orjson.dumps("target"))])
    parsed = orjson.loads(replaced)
    assert parsed["model"] == "target"
    assert {k: v for k, v in parsed.items() if k != "model"} == orjson.loads(
        orjson.dumps({k: v for k, v in ordered.items() if k != "model"})
    )


def test_only_model_bytes_change() -> None:
    raw = b'{"messages": [{"role": "user", "content": "model"}], "model" : "alias", "x": 1.50}'
    out = _edit(raw, model_json=b'"upstream-model"')
    assert out == raw.replace(b'"alias"', b'"upstream-model"')


def test_usage_is_requested_on_streams_only() -> None:
    raw = b'{"model":"a","stream":true}'
    out = orjson.loads(_edit(raw, stream=True, model_json=b'"b"'))
    assert out == {"model": "b", "stream": True, "stream_options": {"include_usage": True}}
    explicit_off = b'{"model":"a","stream":true,"stream_options":{"include_usage":false,"x":1}}'
    out = orjson.loads(_edit(explicit_off, stream=True, model_json=b'"b"', has_options=True))
    assert out["stream_options"] == {"include_usage": True, "x": 1}
    null = b'{"model":"a","stream":true,"stream_options" : null }'
    out = orjson.loads(_edit(null, stream=True, model_json=b'"b"', has_options=True))
    assert out["stream_options"] == {"include_usage": True}
    assert _edit(b'{"model":"a"}') == b'{"model":"a"}'


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=5), st.text(min_size=1), st.booleans())
def test_fast_path_agrees_with_the_scanner(doc: dict[str, object], alias: str, first: bool) -> None:
    doc = {k: v for k, v in doc.items() if k != "model"}
    items = [("model", alias), *doc.items()] if first else [*doc.items(), ("model", alias)]
    for raw in (
        json.dumps(dict(items)).encode(),
        json.dumps(dict(items), ensure_ascii=False).encode(),
        json.dumps({"messages": [{"model": alias}], "model": alias}).encode(),
    ):
        slow = _edit(_slow(raw), model_json=b'"t"')
        assert _edit(raw, model_json=b'"t"') == slow
        assert _edit(_uncached(raw), model_json=b'"t"') == slow


# -- one parse, one truth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"model":"support-bot","model":"support-bot"}', "model"),
        (b'{"model":"a","messages":[],"model":"b"}', "model"),
        (b'{"mod\\u0065l":"a","model":"b"}', "model"),  # an escaped key is the same key
        (b'{"model":"a","\\u006D\\u006f\\u0064\\u0065\\u006c":"b"}', "model"),
        (b'{"model":"a", "stream":true ,\n"stream" : false}', "stream"),
        (b'{"a/b":1,"model":"a","a\\/b":2}', "a/b"),  # `\/` is `/`
        (b'{"a\\/b":1,"model":"a","a\\/b":2}', "a/b"),
        (b'{"x\\"y":1,"x\\u0022y":2,"model":"m"}', 'x"y'),
        (b'{"":1,"model":"m","":2}', ""),
    ],
)
def test_repeated_top_level_keys_are_refused_however_spelled(raw: bytes, key: str) -> None:
    assert _refused_key(raw) == key


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"a","messages":[{"model":"b","model":"c"}]}',  # nested repeats: not ours
        b'{"model":"a","messages":[{"role":"user","content":"\\"model\\":\\"a\\""}]}',
        b'{"model":"a","m":{"model":{"model":"a"}}}',
    ],
)
def test_repeats_below_the_top_level_are_forwarded(raw: bytes) -> None:
    assert _refused_key(raw) is None
    assert orjson.loads(_edit(raw, model_json=b'"t"'))["model"] == "t"


def test_a_long_repeated_key_is_named_shortly() -> None:
    key = "k" * 10_000
    raw = f'{{"model":"a","{key}":1,"{key}":2}}'.encode()
    named = _refused_key(raw)
    assert named is not None and named.startswith("kkk") and len(named) < 100


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        # the escaped value is the alias; the whole literal is replaced
        (b'{"model":"support\\u002dbot","messages":[]}', "support-bot"),
        # an escaped key is the top-level model
        (b'{"m\\u006fdel" : "support-bot"}', "support-bot"),
        # model nested in a message before the top-level one
        (b'{"messages":[{"model":"support-bot"}],"model":"x"}', "x"),
        # the alias's literal inside a string (an escaped quote), the member later
        (b'{"s":"\\"model\\":\\"support-bot\\"","model":"x"}', "x"),
        # a string value that is the key's literal
        (b'{"role":"model","model":"x"}', "x"),
        # whitespace everywhere
        (b' {\n\t"model"\r\n :\t "x"\n ,"n" : 1 } ', "x"),
        # `\\u` that is no escape (an escaped backslash, then u), in a key and a value
        (b'{"C:\\\\users":1,"model":"x","p":"C:\\\\users"}', "x"),
    ],
)
def test_the_edit_replaces_the_top_level_model_whatever_its_spelling(
    raw: bytes, model: str
) -> None:
    data = orjson.loads(raw)
    assert data["model"] == model
    for members in (_members(raw), _uncached(raw), _slow(raw)):
        out = _edit(members, model_json=b'"T"')
        assert json.loads(out) == {**json.loads(raw), "model": "T"}  # as a last-wins reader


@pytest.mark.parametrize(
    ("raw", "fast"),
    [
        (b'{"model":"bot","messages":[{"role":"user","content":"hi"}],"stream":true}', True),
        (b'{"messages":[{"role":"user","content":"caf\\u00e9 <\\u003e"}],"model":"a"}', True),
        (b'{"model":"a","messages":[{"role":"user","content":"C:\\\\users"}]}', True),
        (b'{"model":"a","url":"http:\\/\\/x"}', True),  # `\/` in values only
        (b'{"model":"a","role":"model"}', False),  # the literal twice: scanned
        (b'{"m\\u006fdel":"a"}', False),  # an escaped key
        (b'{"model":"a","messages":[{"r\\u006fle":"user"}]}', False),  # one at any depth
        (b'{"model":"a","a/b":"http:\\/\\/x"}', False),  # `/` in a key and `\/` somewhere
    ],
)  # fmt: skip
def test_which_bodies_take_the_fast_proof(raw: bytes, fast: bool) -> None:
    assert (_members(raw).spans is None) is fast
    assert _uncached(raw).spans is not None  # a new key set is always scanned
    slow = _edit(_slow(raw), model_json=b'"T"')
    assert _edit(raw, model_json=b'"T"') == slow
    assert _edit(_uncached(raw), model_json=b'"T"') == slow


def test_many_keys_are_scanned_not_counted() -> None:
    doc = {f"k{i}": i for i in range(100)} | {"model": "a"}
    raw = orjson.dumps(doc)
    assert _members(raw).spans is not None
    assert orjson.loads(_edit(raw, model_json=b'"T"')) == {**doc, "model": "T"}


def test_escaped_key_is_found() -> None:
    raw = b'{"m\\u006fdel": "alias"}'
    assert top_level_members(raw) == {"model": (15, 22)}


# -- hostile text: raw JSON written by hand ---------------------------------------------------

ALIAS = "support-bot"
KEYS = st.sampled_from(
    ["model", "model", "stream", "stream_options", "user", "messages", "a/b", "n", "mod"]
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> str:
    """An object whose members repeat keys, spell keys and values with escapes, nest `model`
    and hide its literal in strings; usually with a string `model` somewhere."""
    members = draw(st.lists(st.tuples(KEYS, VALUES), max_size=6))
    if draw(st.integers(0, 3)):
        at = draw(st.integers(0, len(members)))
        members.insert(at, ("model", draw(string(st.sampled_from([ALIAS, "x", "model"])))))
    spelled_members = [(draw(spelled(k)), v) for k, v in members]
    return draw(WHITESPACE) + obj(spelled_members, draw(st.lists(WHITESPACE, min_size=1)))


@settings(max_examples=400, deadline=None)
@given(hostile_bodies())
def test_hostile_bodies_refused_exactly_when_a_top_level_key_repeats(text: str) -> None:
    raw = text.encode()
    pairs, reference = parse_pairs(text)
    keys = [k for k, _ in pairs]
    repeated = [k for i, k in enumerate(keys) if k in keys[:i]]
    outcomes: list[Members] = []
    for route in (_members, _uncached):
        try:
            outcomes.append(route(raw))
        except InvalidRequest as exc:
            assert repeated, f"refused without a repeated key: {exc.message}"
            assert exc.param == repeated[0][:64] + ("..." if len(repeated[0]) > 64 else "")
    if repeated:
        assert not outcomes, f"{repeated[0]!r} repeated, not refused"
        return
    members, uncached = outcomes
    slow = _slow(raw)
    assert (members.spans or top_level_members(raw)) == slow.spans == uncached.spans
    if not isinstance(reference.get("model"), str):
        return
    for way in (members, uncached, slow):
        out = _edit(way, stream=True, model_json=b'"T"', has_options="stream_options" in keys)
        expected: dict[str, Any] = {**reference, "model": "T"}
        opts = expected.get("stream_options")
        expected["stream_options"] = {**(opts if isinstance(opts, dict) else {})}
        expected["stream_options"]["include_usage"] = True
        assert json.loads(out) == expected  # what a last-wins model server reads


# -- the fast proof's pattern cache: a client cannot make it compile a pattern per request -----


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body_with_keys(keys: list[str]) -> bytes:
    return orjson.dumps({"model": "m", **{k: "v" for k in keys}})


def _fast_now(raw: bytes, literals: _Literals) -> bool:
    """Whether `raw` took the fast proof; its outcome is the full scan's either way."""
    members = _checked(raw, literals)
    assert (members.spans or top_level_members(raw)) == top_level_members(raw)
    assert _edit(members, model_json=b'"T"') == _edit(_slow(raw), model_json=b'"T"')
    return members.spans is None


def test_a_key_set_is_compiled_when_it_comes_back() -> None:
    literals = _Literals(clock=_Clock())
    raw = b'{"model":"bot","messages":[{"role":"user","content":"hi"}],"stream":true}'
    assert [_fast_now(raw, literals) for _ in range(3)] == [False, True, True]
    # the order of the keys does not matter
    assert _fast_now(b'{"stream":false,"messages":[],"model":"bot"}', literals)
    # nor which body carries them: a key's literal elsewhere still sends it to the scan
    assert not _fast_now(b'{"model":"x","messages":[{"model":"y"}],"stream":true}', literals)


def test_the_process_wide_cache_compiles_a_steady_client_s_keys() -> None:
    raw = b'{"model":"bot","prompt":"hi","max_tokens":5,"seed_test_only_key":1}'
    with _patterns(_Literals()):
        first = check_members(raw, orjson.loads(raw))
        second = check_members(raw, orjson.loads(raw))
    assert first.spans is not None and second.spans is None


def test_a_thrasher_only_pays_the_scan_and_the_compile_budget() -> None:
    clock = _Clock()
    literals = _Literals(per_second=2, burst=3, clock=clock)
    compiled: list[bool] = []
    for i in range(40):  # a new set of 32 keys every request, each sent twice
        raw = _body_with_keys([f"k{i}_{j}" for j in range(31)])
        compiled += [_fast_now(raw, literals) for _ in range(2)]
    assert compiled == [False, True] * 3 + [False, False] * 37  # the burst, then no budget
    clock.now += 1.0  # two more compiles
    steady = _body_with_keys(["messages", "stream"])
    assert [_fast_now(steady, literals) for _ in range(3)] == [False, True, True]
    other = _body_with_keys(["prompt"])
    assert [_fast_now(other, literals) for _ in range(3)] == [False, True, True]
    third = _body_with_keys(["prompt", "n"])
    assert [_fast_now(third, literals) for _ in range(3)] == [False, False, False]
    clock.now += 0.5
    assert _fast_now(third, literals)


def test_only_a_key_set_that_comes_back_soon_is_compiled() -> None:
    literals = _Literals(recent=4, clock=_Clock())
    raw = _body_with_keys(["messages"])
    assert not _fast_now(raw, literals)
    for i in range(4):  # four other new key sets push the first one out of the counter
        assert not _fast_now(_body_with_keys([f"other{i}"]), literals)
    assert [_fast_now(raw, literals) for _ in range(3)] == [False, True, True]


def test_the_cache_keeps_the_key_sets_used_last() -> None:
    literals = _Literals(capacity=2, clock=_Clock())
    a, b, c = (_body_with_keys([k]) for k in ("a", "b", "c"))
    for raw in (a, b):
        assert [_fast_now(raw, literals) for _ in range(2)] == [False, True]
    assert _fast_now(a, literals)  # `a` used last: `b` goes when `c` comes
    assert [_fast_now(c, literals) for _ in range(2)] == [False, True]
    assert _fast_now(a, literals)
    assert [_fast_now(b, literals) for _ in range(2)] == [False, True]  # counted afresh


def test_key_sets_that_are_not_plain_are_never_compiled() -> None:
    literals = _Literals(clock=_Clock())
    for raw in (b'{"model":"a","a/b":1}', b'{"model":"a","' + b"k" * 65 + b'":1}'):
        assert not any(_fast_now(raw, literals) for _ in range(5))
