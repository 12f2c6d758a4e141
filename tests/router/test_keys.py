"""The Redis key schema: one module names every key, the docs are its rendering, and the Lua
scripts build the same names as Python."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import redis

from router import keys

ROOT = Path(__file__).resolve().parents[2]


def _builders() -> dict[str, str]:
    """Every public key builder of the module, called with placeholder arguments."""
    out: dict[str, str] = {}
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != keys.__name__ or name == "markdown_table":
            continue
        params = inspect.signature(fn).parameters
        out[name] = fn(*(f"<{p}>" for p in params))
    return out


def test_docs_table_is_the_schema() -> None:
    assert keys.markdown_table() in (ROOT / "docs/redis.md").read_text()


def test_every_key_of_the_module_is_in_the_schema() -> None:
    patterns = {k.pattern for k in keys.SCHEMA}
    constants = {
        name: value
        for name, value in vars(keys).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
        and value.startswith(keys.PREFIX)
        and name not in {"PREFIX", "INFLIGHT_PATTERN"}
    }  # fmt: skip
    assert set(constants.values()) <= patterns, set(constants.values()) - patterns
    shapes = {re.sub(r"<[^>]*>", "<>", p) for p in patterns}
    built = {name: re.sub(r"<[^>]*>", "<>", v) for name, v in _builders().items()}
    built.pop("experiment_tag")  # a prefix, not a key
    missing = {name: v for name, v in built.items() if v not in shapes}
    assert missing == {}
    assert len(patterns) == len(keys.SCHEMA)


def test_every_experiment_key_carries_the_hash_tag() -> None:
    global_keys = {"request", "inflight", "adapter_lock", "adapter_state"}
    for name, value in _builders().items():
        if name not in global_keys:
            assert value.startswith(keys.PREFIX + "{<name>}:"), name


def test_lua_builds_the_same_names_as_python(rds: redis.Redis) -> None:
    script = (
        keys.LUA_KEYS
        + """
local tag = exp_tag(ARGV[1])
return {tag, request_key(ARGV[2]), arm_key(tag, ARGV[3]), unit_sums_key(tag, ARGV[3]),
        unit_key(tag, ARGV[3]), minute_key(tag, ARGV[3], ARGV[5]), events_key(tag),
        feedback_key(tag, ARGV[2]), last_key(tag, ARGV[4]), capture_key(tag, ARGV[2]),
        captures_key(tag), ended_key(tag), periods_key(tag, ARGV[3])}
"""
    )
    exp, rid, arm, unit, minute = "exp.1-a", "req_" + "ab" * 16, "treatment", "user:42|x", "7"
    got = list(rds.eval(script, 0, exp, rid, arm, unit, minute))
    assert got == [
        keys.experiment_tag(exp),
        keys.request(rid),
        keys.arm_totals(exp, arm),
        keys.unit_sums(exp, arm),
        keys.unit_totals(exp, arm),
        keys.minute(exp, arm, int(minute)),
        keys.events(exp),
        keys.feedback_seen(exp, rid),
        keys.last_prompt(exp, unit),
        keys.capture(exp, rid),
        keys.captures(exp),
        keys.ended(exp),
        keys.period_sums(exp, arm),
    ]


def test_no_key_is_spelled_outside_the_schema_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("router", "serving", "offline")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "router/keys.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "abgate:" in line
    ]
    assert offenders == []
