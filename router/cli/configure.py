"""`abgate capture` and `abgate policy`: change an experiment's capture (docs/flywheel.md) or its
controller policy and ramp without touching the rest of the experiment.

A change reads the experiment, sends only what changes as a JSON merge patch (docs/admin.md:
nested objects are merged, so a new capture rate keeps the redaction rules), with the version it
read as `If-Match` (a change made meanwhile by someone else is refused, 412, not overwritten),
and prints what changed. Lists (redaction rules, guardrails) are sent whole, computed from the
ones read: `--add-redact`/`--remove-redact` and `--guardrail`/`--remove-guardrail` change one
entry and keep the others. Removing redaction rules is audited as `drop-redaction`.

Imports at module level: typer and the standard library only (router/cli/common.py says why).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from router.cli.common import (
    DEFAULT_URL,
    AsJson,
    Name,
    Reason,
    Token,
    Url,
    admin_client,
    fail,
    print_json,
    say,
)

#: The capture's default rules (router/experiments.py `Capture.redact`; a test keeps them equal):
#: the base list when capture is switched on by `capture set`.
DEFAULT_REDACT = ("emails", "phone_numbers", "credit_cards")
MERGE_PATCH = "application/merge-patch+json"
CAPTURE_FIELDS = ("rate", "max_items", "retention_days")
POLICY_FIELDS = (
    "auto", "primary_metric", "higher_is_better", "promote_when", "non_inferiority_margin",
    "guardrails", "min_units_per_arm", "min_evidence_units", "min_step_seconds",
    "interval_seconds", "alpha", "primary_alpha", "srm_threshold", "srm_min_units",
)  # fmt: skip

Rules = Annotated[
    list[str] | None,
    typer.Option(help="a built-in (emails, phone_numbers, credit_cards) or a regex; repeatable"),
]
Guardrails = Annotated[
    list[str] | None,
    typer.Option(
        "--guardrail",
        help="METRIC:MARGIN or METRIC:MARGIN:relative, added or replacing that metric's; "
        "repeatable",
    ),
]


def register(app: typer.Typer) -> None:
    capture = typer.Typer(
        help="An experiment's capture of requests for the flywheel", no_args_is_help=True
    )
    policy = typer.Typer(
        help="The controller's policy and ramp of an experiment", no_args_is_help=True
    )
    app.add_typer(capture, name="capture")
    app.add_typer(policy, name="policy")

    @capture.command("show")
    def capture_show(
        name: Name, as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None
    ) -> None:
        """NAME's capture: rate, limits and redaction rules (or that it is off)."""
        exp = _read(url, token, name)
        if as_json:
            print_json({"name": name, "version": exp["version"], "capture": exp["capture"]})
            return
        say(f"capture of {name} (version {exp['version']})")
        cap = exp["capture"]
        if cap is None:
            say("  off: nothing is captured")
            return
        for key in CAPTURE_FIELDS:
            say(f"  {key:16s} {cap[key]:g}")
        say(f"  {'redact':16s} {', '.join(cap['redact']) or '(none)'}")

    @capture.command("set")
    def capture_set(
        name: Name,
        rate: Annotated[float | None, typer.Option(help="share captured, (0, 1]")] = None,
        max_items: Annotated[int | None, typer.Option(help="newest kept")] = None,
        retention_days: Annotated[float | None, typer.Option(help="days kept")] = None,
        add_redact: Rules = None,
        remove_redact: Rules = None,
        reason: Reason = "",
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Switch NAME's capture on or change it; what is not given stays."""
        if rate is not None and not 0 < rate <= 1:
            fail(f"--rate is a share in (0, 1], got {rate:g}", code=2)
        change: dict[str, Any] = {
            k: v
            for k, v in (("rate", rate), ("max_items", max_items),
                         ("retention_days", retention_days))
            if v is not None
        }  # fmt: skip
        admin = admin_client(url, token)
        exp = admin.call("GET", f"/admin/experiments/{name}")
        before = exp["capture"]
        if before is None and rate is None:
            fail(f"capture of {name} is off: pass --rate to switch it on", code=2)
        if add_redact or remove_redact:
            current = list(before["redact"]) if before is not None else list(DEFAULT_REDACT)
            change["redact"] = _edit_rules(current, add_redact or [], remove_redact or [])
        if not change:
            fail("nothing to change: pass --rate, --max-items, --retention-days, "
                 "--add-redact or --remove-redact", code=2)  # fmt: skip
        after = _patch(admin, name, exp["version"], {"capture": change}, reason)
        say(f"{name}: capture {_capture_change(before, after['capture'])} "
            f"(version {exp['version']} -> {after['version']})")  # fmt: skip

    @capture.command("off")
    def capture_off(
        name: Name, reason: Reason = "", url: Url = DEFAULT_URL, token: Token = None
    ) -> None:
        """Switch NAME's capture off (what was captured stays until it expires)."""
        admin = admin_client(url, token)
        exp = admin.call("GET", f"/admin/experiments/{name}")
        if exp["capture"] is None:
            say(f"{name}: capture is already off (version {exp['version']})")
            return
        after = _patch(admin, name, exp["version"], {"capture": None}, reason)
        say(f"{name}: capture off (version {exp['version']} -> {after['version']})")

    @policy.command("show")
    def policy_show(
        name: Name, as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None
    ) -> None:
        """NAME's controller policy, guardrails and ramp steps."""
        exp = _read(url, token, name)
        if as_json:
            print_json({"name": name, "version": exp["version"], "policy": exp["policy"],
                        "ramp_steps": exp["ramp_steps"]})  # fmt: skip
            return
        say(f"policy of {name} (version {exp['version']})")
        for key, value in exp["policy"].items():
            say(f"  {key:24s} {_shown(key, value)}")
        say(f"  {'ramp_steps':24s} {_shown('ramp_steps', exp['ramp_steps'])}")

    @policy.command("set")
    def policy_set(
        name: Name,
        auto: Annotated[
            bool | None, typer.Option("--auto/--no-auto", help="the controller acts on it")
        ] = None,
        primary_metric: Annotated[str | None, typer.Option()] = None,
        higher_is_better: Annotated[
            bool | None, typer.Option("--higher-is-better/--lower-is-better")
        ] = None,
        promote_when: Annotated[str | None, typer.Option(help="better or non_inferior")] = None,
        non_inferiority_margin: Annotated[float | None, typer.Option()] = None,
        guardrail: Guardrails = None,
        remove_guardrail: Annotated[
            list[str] | None, typer.Option(help="METRIC whose guardrail goes; repeatable")
        ] = None,
        min_units_per_arm: Annotated[int | None, typer.Option()] = None,
        min_evidence_units: Annotated[
            int | None, typer.Option(help="units per arm with data before a test acts")
        ] = None,
        min_step_seconds: Annotated[float | None, typer.Option()] = None,
        interval_seconds: Annotated[float | None, typer.Option()] = None,
        alpha: Annotated[float | None, typer.Option()] = None,
        primary_alpha: Annotated[
            float | None, typer.Option(help="the primary metric's test; default alpha / 2")
        ] = None,
        srm_threshold: Annotated[float | None, typer.Option()] = None,
        srm_min_units: Annotated[int | None, typer.Option()] = None,
        ramp: Annotated[
            str | None, typer.Option(help="ramp steps in percent, e.g. 5,10,25,50,100")
        ] = None,
        reason: Reason = "",
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Change NAME's controller policy or ramp; what is not given stays."""
        given = {
            "auto": auto, "primary_metric": primary_metric, "higher_is_better": higher_is_better,
            "promote_when": promote_when, "non_inferiority_margin": non_inferiority_margin,
            "min_units_per_arm": min_units_per_arm, "min_evidence_units": min_evidence_units,
            "min_step_seconds": min_step_seconds,
            "interval_seconds": interval_seconds, "alpha": alpha, "primary_alpha": primary_alpha,
            "srm_threshold": srm_threshold, "srm_min_units": srm_min_units,
        }  # fmt: skip
        change: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        specs = [_guardrail(s) for s in guardrail or []]  # bad flags fail before any call
        steps = _steps(ramp) if ramp is not None else None
        admin = admin_client(url, token)
        exp = admin.call("GET", f"/admin/experiments/{name}")
        if specs or remove_guardrail:
            change["guardrails"] = _edit_guardrails(
                exp["policy"]["guardrails"], specs, remove_guardrail or []
            )
        body: dict[str, Any] = {"policy": change} if change else {}
        if steps is not None:
            body["ramp_steps"] = steps
        if not body:
            fail("nothing to change: pass at least one option (abgate policy set --help)", 2)
        after = _patch(admin, name, exp["version"], body, reason)
        say(f"{name}: {_policy_change(exp, after)} "
            f"(version {exp['version']} -> {after['version']})")  # fmt: skip


def _read(url: str, token: str | None, name: str) -> dict[str, Any]:
    exp: dict[str, Any] = admin_client(url, token).call("GET", f"/admin/experiments/{name}")
    return exp


def _patch(admin: Any, name: str, version: int, body: dict[str, Any], reason: str) -> Any:
    """PATCH `body` as a JSON merge patch, on the version read (412 if it changed meanwhile)."""
    return admin.call(
        "PATCH",
        f"/admin/experiments/{name}",
        json={**body, "reason": reason},
        headers={"If-Match": f'"{version}"', "Content-Type": MERGE_PATCH},
    )


def _edit_rules(current: list[str], add: list[str], remove: list[str]) -> list[str]:
    unknown = [r for r in remove if r not in current]
    if unknown:
        fail(f"--remove-redact {unknown[0]!r} is not one of the rules ({', '.join(current)})", 2)
    kept = [r for r in current if r not in remove]
    return kept + [r for r in dict.fromkeys(add) if r not in kept]


def _capture_change(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    if before is None:
        fields = ", ".join(f"{k} {after[k]:g}" for k in CAPTURE_FIELDS)
        return f"on: {fields}, redact {', '.join(after['redact'])}"
    parts = [f"{k} {before[k]:g} -> {after[k]:g}" for k in CAPTURE_FIELDS if before[k] != after[k]]
    added = [r for r in after["redact"] if r not in before["redact"]]
    dropped = [r for r in before["redact"] if r not in after["redact"]]
    if added:
        parts.append(f"redact + {', '.join(added)}")
    if dropped:
        parts.append(f"redact - {', '.join(dropped)} (audited as drop-redaction)")
    return "; ".join(parts) or "unchanged"


def _guardrail(spec: str) -> dict[str, Any]:
    """`METRIC:MARGIN[:relative]` as the policy's guardrail object."""
    metric, _, rest = spec.partition(":")
    margin, _, kind = rest.partition(":")
    try:
        value = float(margin)
    except ValueError:
        value = -1.0
    if not metric or value <= 0 or kind not in ("", "relative", "absolute"):
        fail(f"--guardrail {spec!r}: write METRIC:MARGIN or METRIC:MARGIN:relative, with a "
             "margin above 0 (error_rate:0.01, latency_p95_ms:0.25:relative)", code=2)  # fmt: skip
    return {"metric": metric, "margin": value, "relative": kind == "relative"}


def _edit_guardrails(
    current: list[dict[str, Any]], specs: list[dict[str, Any]], remove: list[str]
) -> list[dict[str, Any]]:
    names = [g["metric"] for g in current]
    unknown = [m for m in remove if m not in names]
    if unknown:
        fail(f"--remove-guardrail {unknown[0]!r}: no such guardrail ({', '.join(names)})", 2)
    new = {s["metric"]: s for s in specs}
    kept = [new.pop(g["metric"], g) for g in current if g["metric"] not in remove]
    return kept + list(new.values())


def _steps(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--ramp takes percentages separated by commas (5,10,25,50,100), not {text!r}", 2)


def _shown(key: str, value: Any) -> str:
    if key == "guardrails":
        return ", ".join(
            f"{g['metric']}:{g['margin']:g}" + (":relative" if g["relative"] else "")
            for g in value
        ) or "(none)"  # fmt: skip
    if key == "ramp_steps":
        return ", ".join(f"{s:g}" for s in value) + " %"
    if key == "higher_is_better" and value is None:
        return "(the metric catalogue's direction)"
    if key == "primary_alpha" and value is None:
        return "(alpha / 2)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _policy_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    parts = [
        f"{k} {_shown(k, before['policy'][k])} -> {_shown(k, after['policy'][k])}"
        for k in POLICY_FIELDS
        if before["policy"].get(k) != after["policy"].get(k)
    ]
    if before["ramp_steps"] != after["ramp_steps"]:
        parts.append(
            f"ramp_steps {_shown('ramp_steps', before['ramp_steps'])} -> "
            f"{_shown('ramp_steps', after['ramp_steps'])}"
        )
    return "policy " + ("; ".join(parts) or "unchanged")
