"""The PATCH semantics as pure functions: RFC 7396's own examples, and what a change drops."""

from __future__ import annotations

from typing import Any

import pytest

from router.control.lifecycle import ExperimentPatch, dropped_redaction, merge_patch, patch
from router.errors import Conflict, Unprocessable
from router.experiments import API_KEY_SET, Experiment
from router.secrets import keep_api_keys


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
    # off, then on again with the built-ins: the custom rule leaves at the first step, which
    # must be audited as a drop; switching off a capture with only the built-ins drops nothing
    off = patch(exp, ExperimentPatch.model_validate({"capture": None}))
    assert off.capture is None and dropped_redaction(exp, off) == [r"ACCT-\d+"]
    plain = _exp(capture={"rate": 0.1})
    assert (
        dropped_redaction(plain, patch(plain, ExperimentPatch.model_validate({"capture": None})))
        == []
    )


def test_refusals_name_the_field() -> None:
    exp = _exp()
    with pytest.raises(Unprocessable, match=r"^capture\.rate: Field required"):
        patch(exp, ExperimentPatch.model_validate({"capture": {"max_items": 5}}))
    with pytest.raises(Unprocessable, match=r"^control\.model"):
        patch(exp, ExperimentPatch.model_validate({"control": {"model": 3}}))
    with pytest.raises(Conflict, match="changes nothing"):
        patch(exp, ExperimentPatch.model_validate({"reason": "nothing"}))


def test_a_kept_key_never_follows_its_target_to_another_host() -> None:
    exp = _exp()  # treatment http://t/v1 with api_key sk-1
    moved = {"treatment": {"base_url": "http://evil:8000/v1"}}
    with pytest.raises(Unprocessable, match="another host") as merged:
        patch(exp, ExperimentPatch.model_validate(moved))
    assert merged.value.param == "treatment.api_key"
    resent = patch(exp, ExperimentPatch.model_validate(
        {"treatment": {"base_url": "http://evil:8000/v1", "api_key": "sk-2"}}))  # fmt: skip
    assert resent.treatment.api_key == "sk-2"
    dropped = patch(exp, ExperimentPatch.model_validate(
        {"treatment": {"base_url": "http://evil:8000/v1", "api_key": None}}))  # fmt: skip
    assert dropped.treatment.api_key is None
    same_host = patch(exp, ExperimentPatch.model_validate(
        {"treatment": {"base_urls": ["http://t/v2", "http://T:80/v1"]}}))  # fmt: skip
    assert same_host.treatment.api_key == "sk-1"  # same scheme, host and port: kept
    # "set" (a document read from the API and sent back) keeps the key only on the same hosts
    shown = exp.model_copy(update={"treatment": exp.treatment.model_copy(
        update={"api_key": API_KEY_SET, "base_url": "https://t/v1"})})  # fmt: skip
    with pytest.raises(Unprocessable, match="another host"):
        keep_api_keys(shown, exp)
    back = exp.model_copy(update={"treatment": exp.treatment.model_copy(
        update={"api_key": API_KEY_SET})})  # fmt: skip
    kept = keep_api_keys(back, exp)
    assert kept is not None and kept.treatment.api_key == "sk-1"
