"""Configured values that become upstream headers (the targets' and the default upstream's
`api_key`) are refused with a control character, CR and LF above all: the value would end the
Authorization header and write headers (or a whole request) of its own upstream. The message
never quotes the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from router.control.store import ConfigDoc
from router.errors import ConfigError
from router.experiments import ConfigFile, DefaultUpstream, Experiment, Target
from router.runtime.config_file import load_config_file

SECRET = "sk-live-0123456789"
BAD_KEYS = [
    f"{SECRET}\r\nX-Injected: 1",
    f"{SECRET}\n",
    f"{SECRET}\r",
    f"{SECRET}\x00",
    f"{SECRET}\x7f",
    f"{SECRET} with spaces",
    f"{SECRET}\t",
    f"{SECRET}é",
]


def _exp(**target: Any) -> dict[str, Any]:
    arm = {"base_url": "http://u:8000/v1", "model": "m", **target}
    return {"name": "e", "route": "r", "control": arm, "treatment": arm, "treatment_percent": 5}


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_key_with_a_control_character_is_refused_everywhere(key: str) -> None:
    for model, data in (
        (Target, {"base_url": "http://u:8000/v1", "model": "m", "api_key": key}),
        (DefaultUpstream, {"base_url": "http://u:8000/v1", "api_key": key}),
        (Experiment, _exp(api_key=key)),
    ):
        with pytest.raises(ValidationError) as info:
            model.model_validate(data)
        messages = " ".join(e["msg"] for e in info.value.errors())
        assert "api_key must be printable ASCII" in messages
        assert SECRET not in messages


def test_ordinary_keys_pass() -> None:
    for key in (SECRET, "A" * 200, "abc.DEF_ghi-jkl~+/=", None, ""):
        assert Target.model_validate({"base_url": "http://u/v1", "model": "m", "api_key": key})


def test_a_base_url_with_a_control_character_is_refused() -> None:
    for url in ("http://u\x00x:8000/v1", "http://u:8000/v1\x01", "http://u:8000/v1\r\nX: 1"):
        with pytest.raises(ValidationError):
            Target.model_validate({"base_url": url, "model": "m"})


def test_config_file_with_a_bad_key_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "abgate.yaml"
    path.write_text(
        "experiments: []\n"
        "default_upstream:\n"
        "  base_url: http://vllm:8000/v1\n"
        '  api_key: "sk-live-0123456789\\r\\nX-Injected: yes"\n'
    )
    with pytest.raises(ConfigError, match="api_key must be printable ASCII") as info:
        load_config_file(path)
    assert SECRET not in str(info.value)


def test_config_file_may_not_carry_the_masked_marker() -> None:
    """`"set"` is how the admin API shows a stored key; in a file it would be sent as the key."""
    for doc in (
        {"experiments": [_exp(api_key="set")]},
        {"default_upstream": {"base_url": "http://u/v1", "api_key": "set"}},
    ):
        with pytest.raises(ValidationError, match="how the admin API shows a stored key"):
            ConfigFile.model_validate(doc)
    assert ConfigFile.model_validate({"experiments": [_exp(api_key=SECRET)]})


def test_a_stored_document_with_a_bad_key_is_refused_without_quoting_it() -> None:
    """A document written before the check does not load; the error (logged) names the field
    and never the key."""
    target = {"base_url": "http://u/v1", "model": "m", "api_key": f"{SECRET}\r\nX-Injected: 1"}
    exp = {**_exp(), "control": target}
    raw = json.dumps({"version": 3, "experiments": {"e": exp}}).encode()
    with pytest.raises(ConfigError, match=r"control\.api_key: .*printable ASCII") as info:
        ConfigDoc.from_json(raw)
    assert SECRET not in str(info.value) and info.value.__cause__ is None
