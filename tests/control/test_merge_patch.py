"""The PATCH semantics as pure functions: RFC 7396's own examples, and what a change drops."""

from __future__ import annotations

from typing import Any

import pytest

from router.control.lifecycle import ExperimentPatch, dropped_redaction, merge_patch, patch
from router.errors import Conflict, Unprocessable
from router.experiments import Experiment


@pytest.mark.parametrize(
    ("target", "change", "result"),
    [  # RFC 7396, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_rfc_7396_examples(target: Any, change: Any, result: Any) -> None:
    before = repr(target)
    assert merge_patch(target, change) == result
    assert repr(target) == before  # the target is not modified


def _exp(**extra: Any) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "e",
            "route": "r",
            "control": {"base_url": "http://c/v1", "model": "c"},
            "treatment": {"base_url": "http://t/v1", "model": "t", "api_key": "sk-1"},
            "treatment_percent": 10,
            **extra,
        }
    )


def test_a_patch_merges_into_the_experiment_and_drops_only_what_it_names() -> None:
    exp = _exp(capture={"rate": 0.1, "redact": ["emails", r"ACCT-\d+"]})
    rate = patch(exp, ExperimentPatch.model_validate({"capture": {"rate": 1.0}}))
    assert rate.capture is not None and rate.capture.redact == ["emails", r"ACCT-\d+"]
    assert rate.version == exp.version + 1 and dropped_redaction(exp, rate) == []
    key = patch(exp, ExperimentPatch.model_validate({"treatment": {"model": "t2"}}))
    assert key.treatment.api_key == "sk-1" and key.treatment.model == "t2"

    narrowed = patch(exp, ExperimentPatch.model_validate({"capture": {"redact": ["emails"]}}))
    assert dropped_redaction(exp, narrowed) == [r"ACCT-\d+"]
    reset = patch(exp, ExperimentPatch.model_validate({"capture": {"redact": None}}))
    assert dropped_redaction(exp, reset) == [r"ACCT-\d+"]
    off = patch(exp, ExperimentPatch.model_validate({"capture": None}))
    assert off.capture is None and dropped_redaction(exp, off) == []


def test_refusals_name_the_field() -> None:
    exp = _exp()
    with pytest.raises(Unprocessable, match=r"^capture\.rate: Field required"):
        patch(exp, ExperimentPatch.model_validate({"capture": {"max_items": 5}}))
    with pytest.raises(Unprocessable, match=r"^control\.model"):
        patch(exp, ExperimentPatch.model_validate({"control": {"model": 3}}))
    with pytest.raises(Conflict, match="changes nothing"):
        patch(exp, ExperimentPatch.model_validate({"reason": "nothing"}))
