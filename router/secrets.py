"""The targets' `api_key` never leaves the gateway: how the admin API and the audit show it.

The stored document keeps each key; everything the gateway answers or records about an
experiment (admin responses, reports, the audit's before/after copies) shows a target's key as
``"set"``, or ``null`` when the target has none. An audit entry whose change replaced a key
shows ``"set (changed)"`` after it, so a rotation stays visible without either key.

Round trip: a write (create, PATCH, anything that goes through the admin API's `change`) whose
target carries ``"api_key": "set"`` keeps that target's stored key, so a document read from the
API can be edited and sent back as it is. With no stored key to keep, the write is refused
(422), and so is a target whose URLs move to another host: a key only follows a target to a
new host when it is sent again. ``null`` removes a key, any other string replaces it. A config
file may not carry ``"set"`` (router/experiments.py refuses it: the file is where a key is
written).
"""

from __future__ import annotations

from typing import Any

from router.errors import Unprocessable
from router.experiments import API_KEY_SET, Experiment, key_follows_to

API_KEY_CHANGED = "set (changed)"
TARGETS = ("control", "treatment")

__all__ = [
    "API_KEY_CHANGED",
    "API_KEY_SET",
    "keep_api_keys",
    "mask_audit_pair",
    "mask_experiment",
    "mask_experiment_json",
]


def _shown(key: object) -> str | None:
    return None if key is None else API_KEY_SET


def mask_experiment(exp: Experiment) -> Experiment:
    """The experiment as the admin API shows it: each target's key as "set" or null."""
    update = {
        arm: target.model_copy(update={"api_key": API_KEY_SET})
        for arm in TARGETS
        if (target := getattr(exp, arm)).api_key is not None
    }
    return exp.model_copy(update=update) if update else exp


def mask_experiment_json(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The same for an experiment's JSON form (a copy; `data` is left as it is)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for arm in TARGETS:
        target = out.get(arm)
        if isinstance(target, dict) and "api_key" in target:
            out[arm] = {**target, "api_key": _shown(target["api_key"])}
    return out


def mask_audit_pair(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """An audit entry's before/after copies with the keys masked; a replaced key shows as
    "set (changed)" after. Applying it again to its own output changes nothing."""
    masked_after = mask_experiment_json(after)
    if isinstance(before, dict) and isinstance(masked_after, dict):
        for arm in TARGETS:
            old, new = (_key(d, arm) for d in (before, after))
            if old is not None and new is not None and old != new and new != API_KEY_SET:
                masked_after[arm] = {**masked_after[arm], "api_key": API_KEY_CHANGED}
    return mask_experiment_json(before), masked_after


def _key(data: dict[str, Any] | None, arm: str) -> object:
    target = data.get(arm) if isinstance(data, dict) else None
    return target.get("api_key") if isinstance(target, dict) else None


def keep_api_keys(new: Experiment | None, current: Experiment | None) -> Experiment | None:
    """`new` with each target's "set" replaced by the stored key of that target (`current`);
    Unprocessable (422) when there is none to keep."""
    if new is None:
        return None
    update = {}
    for arm in TARGETS:
        target = getattr(new, arm)
        if target.api_key != API_KEY_SET:
            continue
        stored = getattr(current, arm).api_key if current is not None else None
        if stored is None:
            raise Unprocessable(
                f'{arm}.api_key: "{API_KEY_SET}" keeps the stored key, and this target has '
                "none; send the key itself (or null for none)",
                param=f"{arm}.api_key",
            )
        if moved := key_follows_to(getattr(current, arm), target):
            raise Unprocessable(
                f'{arm}.api_key: "{API_KEY_SET}" cannot keep the stored key for a target that '
                f"moves to another host ({', '.join(sorted(moved))}); send the key itself",
                param=f"{arm}.api_key",
            )
        update[arm] = target.model_copy(update={"api_key": stored})
    return new.model_copy(update=update) if update else new
