"""Admin routes for an experiment's lifecycle: `POST /admin/experiments/{name}/<action>` for
start, pause, resume, promote, rollback and advance, with an optional `{"reason": ...}`.

Starting or resuming passes the offline gate first when the experiment requires an eval report.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response

from router.admin.deps import (
    ADMIN_AUTH,
    ADMIN_ERRORS,
    AdminActor,
    ExperimentName,
    GatewayDep,
    IfMatch,
    change,
    eval_records,
    parse_if_match,
    require_experiment,
)
from router.control.evalgate import check_start
from router.control.lifecycle import Action, ActionRequest, transition
from router.experiments import Experiment

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS)

ACTIONS: tuple[Action, ...] = ("start", "pause", "resume", "promote", "rollback", "advance")
# Only these put traffic on the treatment again, so only these need a passing eval report.
GATED: tuple[Action, ...] = ("start", "resume")

ActionEndpoint = Callable[..., Awaitable[Experiment]]


def _endpoint(action: Action) -> ActionEndpoint:
    """One endpoint per action (its own route, summary and operation id in the OpenAPI)."""
    gated = action in GATED

    async def act(
        name: ExperimentName,
        response: Response,
        gateway: GatewayDep,
        actor: AdminActor,
        body: ActionRequest | None = None,
        if_match: IfMatch = None,
    ) -> Experiment:
        version = parse_if_match(if_match)
        reason = body.reason if body is not None else ""
        records = await eval_records(gateway, None) if gated else {}

        def apply(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
            exp = transition(require_experiment(name, current), action, reason)
            if gated:
                check_start(exp, records)
            return exp

        exp = require_experiment(
            name,
            await change(
                gateway, name, apply, actor=actor, action=action, reason=reason,
                if_match=version,
            ),
        )  # fmt: skip
        response.headers["ETag"] = f'"{exp.version}"'
        return exp

    act.__name__ = f"{action}_experiment"
    return act


for _action in ACTIONS:
    router.add_api_route(
        f"/experiments/{{name}}/{_action}",
        _endpoint(_action),
        methods=["POST"],
        response_model=Experiment,
        summary=f"{_action.capitalize()} an experiment",
    )
