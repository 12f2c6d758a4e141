"""Experiment lifecycle: the allowed transitions and the changes an operator can make.

States::

    draft --start--> running <--resume-- paused
                     running --pause---> paused
    running | paused --promote--> promoted        (treatment serves 100 %)
    running | paused | promoted --rollback--> rolled_back   (share 0: everyone on control)

`advance` moves a running experiment to the next of its `ramp_steps`. Promoted and rolled-back
experiments are final apart from a rollback of a promotion. Functions here are pure: they take
an experiment and return the changed copy, or raise `Conflict`.

A PATCH is a JSON merge patch (RFC 7396) of the experiment: an object is merged into the
current value member by member, recursively (`{"capture": {"rate": 1.0}}` changes the rate and
keeps the redaction rules, `{"treatment": {"model": "m2"}}` keeps the target's URL and key), a
`null` member is removed and so takes its default (`{"capture": null}` switches capture off),
and arrays and other values replace the current one whole. The merged document is validated as
a whole, as a new experiment would be.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.errors import Conflict, Unprocessable
from router.experiments import Arm, Capture, Experiment, MissingUnitPolicy, State, key_follows_to

Action = Literal["start", "pause", "resume", "promote", "rollback", "advance"]

ALLOWED: dict[Action, frozenset[State]] = {
    "start": frozenset({"draft"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "promote": frozenset({"running", "paused"}),
    "rollback": frozenset({"running", "paused", "promoted"}),
    "advance": frozenset({"running"}),
}
TARGET_STATE: dict[Action, State] = {
    "start": "running",
    "pause": "paused",
    "resume": "running",
    "promote": "promoted",
    "rollback": "rolled_back",
    "advance": "running",
}


_MERGED = (
    "Merged into the current value (JSON merge patch: the members sent replace theirs, a null "
    "member takes its default, the others stay); the result is validated as a whole"
)


class ExperimentPatch(BaseModel):
    """Fields an operator may change on a live experiment (PATCH), as a JSON merge patch:
    unset fields stay, `null` resets a field to its default, objects are merged recursively."""

    model_config = ConfigDict(extra="forbid", strict=True)

    treatment_percent: float | None = Field(default=None, ge=0, le=100)
    route: str | None = Field(default=None, min_length=1, max_length=200)
    control: dict[str, Any] | None = Field(default=None, description=f"A target. {_MERGED}")
    treatment: dict[str, Any] | None = Field(default=None, description=f"A target. {_MERGED}")
    description: str | None = None
    overrides: dict[str, Arm | None] | None = Field(
        default=None, description="Unit id to arm, merged: a unit set to null loses its override"
    )
    ramp_steps: list[float] | None = Field(default=None, min_length=1)
    unit_id_headers: list[str] | None = Field(default=None, min_length=1)
    use_body_user: bool | None = None
    missing_unit_policy: MissingUnitPolicy | None = None
    signals: list[str] | None = None
    policy: dict[str, Any] | None = Field(
        default=None, description=f"The controller's policy. {_MERGED}"
    )
    fallback_to_control: bool | None = None
    circuit_breaker: dict[str, Any] | None = Field(default=None, description=_MERGED)
    detect_regenerations: bool | None = None
    regeneration_window_seconds: float | None = Field(default=None, gt=0, le=86400)
    feedback_window_seconds: int | None = Field(default=None, gt=0, le=90 * 86400)
    capture: dict[str, Any] | None = Field(
        default=None,
        description=f"null switches capture off. {_MERGED}: a `redact` list sent replaces the "
        "current one, and one that drops rules is audited as `drop-redaction`",
    )
    requires_eval_report: bool | None = None
    reason: str = Field(default="", max_length=1000, description="Recorded in the audit log")


class ShareRequest(BaseModel):
    """The treatment's share alone: a PATCH of `treatment_percent` with the same checks,
    audited as its own action (`set-share`) so the log reads like the commands that were run."""

    model_config = ConfigDict(extra="forbid", strict=True)

    treatment_percent: float = Field(ge=0, le=100, description="Treatment's share in percent")
    reason: str = Field(default="", max_length=1000, description="Recorded in the audit log")


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", max_length=1000)


def transition(exp: Experiment, action: Action, reason: str = "") -> Experiment:
    """The experiment after `action`, or `Conflict` if its state does not allow it."""
    if exp.state not in ALLOWED[action]:
        allowed = " or ".join(sorted(ALLOWED[action]))
        raise Conflict(
            f"cannot {action} experiment {exp.name!r}: it is {exp.state}, and {action} needs "
            f"it {allowed}"
        )
    update: dict[str, Any] = {"state": TARGET_STATE[action], "state_reason": reason or action}
    if action == "advance":
        nxt = next((s for s in exp.ramp_steps if s > exp.treatment_percent), None)
        if nxt is None:
            raise Conflict(
                f"experiment {exp.name!r} is at its last ramp step "
                f"({exp.treatment_percent:g} %); promote it instead"
            )
        update["treatment_percent"] = nxt
        update["state_reason"] = reason or f"advance to {nxt:g} %"
    elif action == "promote":
        update["treatment_percent"] = 100.0
    elif action == "rollback":
        update["treatment_percent"] = 0.0
    elif action == "resume":
        # the controller starts a new step: the data that paused it does not pause it again
        update["resumed_at"] = time.time()
    return bump(exp, **update)


def patch(exp: Experiment, change: ExperimentPatch) -> Experiment:
    """Apply a PATCH (a JSON merge patch); validation errors come from re-validating the whole
    experiment."""
    if exp.state in ("promoted", "rolled_back"):
        raise Conflict(f"experiment {exp.name!r} is {exp.state}; create a new experiment instead")
    fields = change.model_dump(exclude_unset=True, exclude={"reason"})
    if not fields:
        raise Conflict("the PATCH body changes nothing")
    merged = merge_patch(exp.model_dump(), fields)
    try:
        after = bump(Experiment.model_validate(merged))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"{where}: {first['msg']}", param=where) from None
    for arm in ("control", "treatment"):
        sent = fields.get(arm)
        kept = isinstance(sent, dict) and "api_key" not in sent
        old, new = getattr(exp, arm), getattr(after, arm)
        if kept and new.api_key is not None and (moved := key_follows_to(old, new)):
            raise Unprocessable(
                f"{arm}.api_key: the target moves to another host ({', '.join(sorted(moved))}); "
                "a merge keeps the stored key only on the same hosts: send the key again (or "
                "null for none)",
                param=f"{arm}.api_key",
            )
    return after


def merge_patch(target: Any, change: Any) -> Any:
    """RFC 7396: `change` applied to `target` (neither is modified)."""
    if not isinstance(change, dict):
        return change
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def dropped_redaction(before: Experiment, after: Experiment) -> list[str]:
    """The redaction rules of `before` that `after` no longer has. Switching capture off drops
    the rules beyond the built-ins too: capture switched on again later starts from the
    built-ins, so the custom rules leave the document here, and the audit must say so."""
    if before.capture is None:
        return []
    if after.capture is None:
        return [rule for rule in before.capture.redact if rule not in _BUILTIN_REDACTION]
    kept = set(after.capture.redact)
    return [rule for rule in before.capture.redact if rule not in kept]


_BUILTIN_REDACTION = frozenset(
    Capture.model_fields["redact"].get_default(call_default_factory=True)
)


def bump(exp: Experiment, **update: Any) -> Experiment:
    """A copy with `update` applied, the version incremented and the time stamped."""
    data = exp.model_dump() | update
    data["version"] = exp.version + 1
    data["updated_at"] = time.time()
    return Experiment.model_validate(data)
