"""Which experiments keep an adapter in use (the admin API refuses to unload it, and a swap's
--unload-old leaves it loaded): a live experiment through either arm, and a final one for as
long as it still holds its route."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from router.admin.adapters import _in_use
from router.dataplane.routing import compile_table
from router.experiments import Experiment
from tests.runtime.conftest import experiment


def _gateway(*experiments: Experiment) -> Any:
    return SimpleNamespace(table=compile_table(1, list(experiments), None, ["x-user-id"]))


def test_a_promoted_experiment_that_holds_its_route_keeps_its_treatment_in_use() -> None:
    promoted = experiment("p", "route-p", state="promoted")
    assert _in_use(_gateway(promoted), "p-lora") == ["p"]
    assert _in_use(_gateway(promoted), "base") == []  # its control gets no request any more


def test_a_rolled_back_experiment_keeps_its_control_not_its_treatment() -> None:
    rolled = experiment("r", "route-r", state="rolled_back")
    assert _in_use(_gateway(rolled), "base") == ["r"]
    assert _in_use(_gateway(rolled), "r-lora") == []


def test_live_experiments_use_both_arms_and_a_replaced_final_one_nothing() -> None:
    promoted = experiment("old", "shared", state="promoted")
    live = experiment("new", "shared", state="paused")  # it took the route over
    gateway = _gateway(promoted, live)
    assert _in_use(gateway, "old-lora") == []
    assert _in_use(gateway, "new-lora") == ["new"]
    assert _in_use(gateway, "base") == ["new"]
    draft = experiment("d", "route-d", state="draft")
    assert _in_use(_gateway(draft), "d-lora") == ["d"]
