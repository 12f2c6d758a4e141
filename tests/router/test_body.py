"""Byte-exact body edits: the located spans are exactly the top-level values."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.dataplane.body import edit_request, rewrite, top_level_spans

KEYS = frozenset((b'"model"', b'"stream_options"'))

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
    spans = top_level_spans(raw, KEYS)
    start, end = spans[b'"model"']
    assert orjson.loads(raw[start:end]) == model
    replaced = rewrite(raw, [(start, end, orjson.dumps("target"))])
    parsed = orjson.loads(replaced)
    assert parsed["model"] == "target"
    assert {k: v for k, v in parsed.items() if k != "model"} == orjson.loads(
        orjson.dumps({k: v for k, v in ordered.items() if k != "model"})
    )


def _edit(
    raw: bytes,
    *,
    stream: bool = False,
    model_json: bytes | None = None,
    has_options: bool = False,
    alias: bytes | None = None,
) -> bytes:
    """`edit_request` for a client that did not ask for usage itself."""
    return edit_request(
        raw,
        stream=stream,
        client_wants_usage=False,
        model_json=model_json,
        has_options=has_options,
        alias=alias,
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
    assert _edit(b'{"model":"a"}') == b'{"model":"a"}'


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=5), st.text(min_size=1), st.booleans())
def test_fast_path_agrees_with_the_scanner(doc: dict[str, object], alias: str, first: bool) -> None:
    doc = {k: v for k, v in doc.items() if k != "model"}
    items = [("model", alias), *doc.items()] if first else [*doc.items(), ("model", alias)]
    raw = json.dumps(dict(items)).encode()
    fast = _edit(raw, model_json=b'"t"', alias=orjson.dumps(alias))
    slow = _edit(raw, model_json=b'"t"')
    assert fast == slow
    nested = json.dumps({"messages": [{"model": alias}], "model": alias}).encode()
    assert _edit(nested, model_json=b'"t"', alias=orjson.dumps(alias)) == _edit(
        nested, model_json=b'"t"'
    )


def test_escaped_key_is_found() -> None:
    raw = b'{"m\\u006fdel": "alias"}'
    assert top_level_spans(raw, KEYS) == {b'"model"': (15, 22)}
