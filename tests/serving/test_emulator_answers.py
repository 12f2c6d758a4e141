"""The emulator's answer key: known prompts answered right with a per-topic quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.emulator import EmulatorConfig
from serving.emulator.answers import DEFAULT_WRONG_ANSWER, load_answer_key, prompt_key
from serving.emulator.cli import build_config
from serving.emulator.config import ModelProfile, parse_profile
from tests.serving.emulator_helpers import client_for, make_app, sse_events


def _key_file(tmp_path: Path, n: int = 200) -> Path:
    path = tmp_path / "key.jsonl"
    lines = [
        json.dumps(
            {"id": f"c{i}", "input": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "reference": f"- first line\n- Answer: {2 * i}"}
        )
        for i in range(n)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _rate(contents: list[str], n: int) -> float:
    return sum(c == f"- first line\n- Answer: {2 * i}" for i, c in enumerate(contents)) / n


async def test_topic_quality_sets_the_share_of_right_answers(tmp_path: Path) -> None:
    key = load_answer_key("math", _key_file(tmp_path))
    app = make_app(
        answers=key.entries,
        profiles={
            "good": ModelProfile(topic_quality={"math": 0.9}),
            "bad": ModelProfile(topic_quality={"math": 0.2}),
        },
        served_model_names=["base", "good", "bad"],
    )
    async with client_for(app) as client:
        rates = {}
        for model in ("good", "bad"):
            contents = []
            for i in range(200):
                msg = [{"role": "user", "content": f"what is {i}  +  {i}?"}]  # case, spaces
                body = {"model": model, "messages": msg}
                r = await client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200
                contents.append(r.json()["choices"][0]["message"]["content"])
            rates[model] = _rate(contents, 200)
            wrong = [c for c in contents if not c.startswith("- first line")]
            assert set(wrong) <= {DEFAULT_WRONG_ANSWER}
        assert 0.82 <= rates["good"] <= 0.97
        assert 0.12 <= rates["bad"] <= 0.3
        # unknown prompts still get generated text
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "good", "messages": [{"role": "user", "content": "hello"}]},
        )
        assert r.json()["choices"][0]["message"]["content"] != DEFAULT_WRONG_ANSWER


async def test_scripted_answers_stream_with_their_whitespace(tmp_path: Path) -> None:
    key = load_answer_key("math", _key_file(tmp_path, 3))
    app = make_app(answers=key.entries, default_profile=ModelProfile(topic_quality={"math": 1}))
    async with client_for(app) as client:
        body = {
            "model": "base",
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        r = await client.post("/v1/chat/completions", json=body)
        events = sse_events(r.text)
        text = "".join(
            e["choices"][0]["delta"].get("content", "")
            for e in events
            if isinstance(e, dict) and e["choices"]
        )
        assert text == "- first line\n- Answer: 4"
        usage = next(e for e in events if isinstance(e, dict) and not e["choices"])["usage"]
        assert usage["completion_tokens"] == 6  # one token per word


def test_answer_key_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "y"}\n{"prompt": "z"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: an entry needs a string 'answer'"):
        load_answer_key("t", bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_answer_key("t", bad)
    with pytest.raises(ValueError, match="cannot read answer key"):
        load_answer_key("t", tmp_path / "missing.jsonl")


def test_profile_parses_topic_qualities() -> None:
    name, profile = parse_profile("lora:quality=0.5,quality.target=0.9,quality.following=0.1")
    assert name == "lora"
    assert profile.quality == 0.5
    assert profile.topic_quality == {"target": 0.9, "following": 0.1}
    with pytest.raises(ValueError, match=r"quality.target=1.5 is invalid|must be in \[0, 1\]"):
        parse_profile("lora:quality.target=1.5")
    with pytest.raises(ValueError, match="names no topic"):
        parse_profile("lora:quality.=0.5")


def test_cli_builds_the_key(tmp_path: Path) -> None:
    import argparse

    from serving.emulator.cli import add_arguments
    from serving.emulator.settings import EmulatorSettings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--base-model", "b", "--answer-key", f"math={_key_file(tmp_path, 5)}"]
    )
    config = build_config(args, EmulatorSettings())
    assert isinstance(config, EmulatorConfig)
    assert config.answers[prompt_key("What is 3 + 3?")].answer.endswith("Answer: 6")
    with pytest.raises(SystemExit):
        parser.parse_args(["--base-model", "b", "--answer-key", "no-topic"])
