"""The vLLM emulator's LoRA adapters (runtime admin routes, static adapters), config and CLI."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.emulator import (
    EmulatorSettings,
    ModelProfile,
    add_arguments,
    build_config,
    parse_profile,
)
from tests.serving.emulator_helpers import adapter_dir, chat, client_for, make_app

# -- LoRA --------------------------------------------------------------------------------------


async def test_lora_lifecycle(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "sql"))
    load = await client.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": path})
    assert (load.status_code, load.text) == (
        200,
        "Success: LoRA adapter 'sql' added successfully.",
    )
    used = (await chat(client, model="sql")).json()
    assert used["model"] == "sql"
    base = (await chat(client, model="base")).json()
    assert used["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    cards = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}
    assert cards["sql"]["parent"] == "base"
    assert cards["sql"]["root"] == path
    assert cards["sql"]["max_model_len"] is None
    unload = await client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert (unload.status_code, unload.text) == (
        200,
        "Success: LoRA adapter 'sql' removed successfully.",
    )
    gone = await chat(client, model="sql")
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == (
        "The model `sql` does not exist. Valid aliases: base, alias."
    )
    ids = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["base", "alias"]


def invalid_input(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "InvalidUserInput", "param": None, "code": 400}}


async def test_lora_admin_errors(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "a"))
    load = "/v1/load_lora_adapter"
    assert (await client.post(load, json={"lora_name": "a", "lora_path": path})).status_code == 200
    twice = await client.post(load, json={"lora_name": "a", "lora_path": path})
    assert twice.status_code == 400
    assert twice.json() == invalid_input(
        "The lora adapter 'a' has already been loaded. If you want to load the adapter in place, "
        "set 'load_inplace' to True."
    )
    inplace = await client.post(
        load, json={"lora_name": "a", "lora_path": path, "load_inplace": True}
    )
    assert inplace.status_code == 200
    base = await client.post(load, json={"lora_name": "alias", "lora_path": path})
    assert base.json() == invalid_input(
        "The lora adapter 'alias' conflicts with a served base model."
    )
    empty = await client.post(load, json={"lora_name": "", "lora_path": path})
    assert empty.status_code == 400
    assert empty.json() == invalid_input("Both 'lora_name' and 'lora_path' must be provided.")
    (tmp_path / "empty").mkdir()
    # vLLM 0.32 shows paths under system folders (/tmp here) as <path>, other paths as they are
    for bad, shown in (
        (str(tmp_path / "empty"), "<path>"),
        (str(tmp_path / "missing"), "<path>"),
        ("/nowhere", "/nowhere"),
    ):
        response = await client.post(load, json={"lora_name": "b", "lora_path": bad})
        assert response.status_code == 404
        assert response.json()["error"] == {
            "message": f"Loading lora b failed: No adapter found for {shown}",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    unload = "/v1/unload_lora_adapter"
    no_name = await client.post(unload, json={"lora_name": ""})
    assert no_name.status_code == 400
    assert no_name.json() == invalid_input(
        "'lora_name' needs to be provided to unload a LoRA adapter."
    )
    unknown = await client.post(unload, json={"lora_name": "zzz"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The lora adapter 'zzz' cannot be found."


async def test_concurrent_loads_of_one_name_are_serialised(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = {"lora_name": "x", "lora_path": str(adapter_dir(tmp_path, "x"))}
    responses = await asyncio.gather(
        *(client.post("/v1/load_lora_adapter", json=body) for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400, 400]


async def test_admin_routes_absent_without_runtime_updating() -> None:
    async with client_for(make_app()) as c:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = await c.post(path, json={"lora_name": "a", "lora_path": "/x"})
            assert response.status_code == 404
            assert response.json() == {"detail": "Not Found"}


async def test_static_loras_and_adapter_shadows_base(tmp_path: Path) -> None:
    loras = {"base": str(adapter_dir(tmp_path, "shadow")), "b": str(adapter_dir(tmp_path, "b"))}
    async with client_for(make_app(static_loras=loras)) as c:
        body = (await chat(c, model="base")).json()
        cards = (await c.get("/v1/models")).json()["data"]
    assert body["model"] == "base"
    assert [(card["id"], card["parent"]) for card in cards] == [
        ("base", None),
        ("alias", None),
        ("base", "base"),
        ("b", "base"),
    ]


def test_static_lora_without_adapter_config_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No adapter found"):
        make_app(static_loras={"a": str(tmp_path)})


# -- config and CLI ----------------------------------------------------------------------------


def test_parse_profile() -> None:
    name, profile = parse_profile(
        "support-lora-v2:latency_ms=20,ttft_ms=5,tokens_per_second=200,error_rate=0.01,quality=0.9"
    )
    assert name == "support-lora-v2"
    assert profile == ModelProfile(
        latency_ms=20, ttft_ms=5, tokens_per_second=200, error_rate=0.01, quality=0.9
    )
    assert parse_profile("x:") == ("x", ModelProfile())
    for spec, needle in [
        ("x:speed=3", "speed"),
        ("x:quality=high", "quality='high'"),
        ("x:error_rate=2", "error_rate=2.0"),
        ("x:latency_ms=-1", "latency_ms=-1.0"),
        ("no-colon", "NAME:"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_profile(spec)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="emulate")
    add_arguments(result)
    return result


def test_cli_builds_config(tmp_path: Path) -> None:
    path = adapter_dir(tmp_path, "a")
    argv = "--base-model b --served-model-name s1 s2 --error-format flat --quality 0.5"
    args = parser().parse_args([*argv.split(), "--lora", f"a={path}", "--profile", "a:quality=1"])
    settings = EmulatorSettings(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    config = build_config(args, settings)
    assert config.served_model_names == ["s1", "s2"]
    assert config.static_loras == {"a": str(path)}
    assert config.allow_runtime_lora_updating
    assert config.error_format == "flat"
    assert config.default_profile.quality == 0.5
    assert config.profiles["a"].quality == 1.0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--error-rate", "2"], "--error-rate"),
        (["--quality", "x"], "--quality"),
        (["--port", "99999"], "--port"),
        (["--profile", "a:bogus=1"], "--profile"),
        (["--lora", "a=/nonexistent"], "--lora"),
        (["--error-format", "xml"], "--error-format"),
    ],
)
def test_cli_rejects_bad_values_naming_the_flag(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--base-model", "b", *flags])
    assert f"argument {named}" in capsys.readouterr().err


@pytest.mark.parametrize(("raw", "on"), [("True", True), ("1", True), ("true", True), ("0", False)])
def test_runtime_lora_setting(raw: str, on: bool) -> None:
    assert EmulatorSettings(VLLM_ALLOW_RUNTIME_LORA_UPDATING=raw).allow_runtime_lora_updating is on
