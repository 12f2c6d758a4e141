"""`abgate demo`: the whole story on embedded defaults, in a few minutes.

It starts a private Redis, the vLLM emulator (a base model and two LoRA adapters, one better
and one worse than the base), a gateway and a controller, all as real processes. Two experiments
start at 5 % side by side; simulated users talk to the gateway through the official `openai`
client and give thumbs up or down depending on the answer they get. The controller ramps the
better adapter up to promotion and rolls the worse one back; a live view shows shares, counts
and decisions. At the end the HTML reports are written and their paths printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from analysis.report import Report
from analysis.report_html import render_html
from router.cli.tables import Column, fitted
from router.demo.population import Population
from router.runtime.embedded_redis import EmbeddedRedis, free_port, stop_process

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EXPERIMENTS = (
    # name, route, adapter, adapter quality (the base answers well 60 % of the time)
    ("support-v2", "support-bot", "support-lora-v2", 0.85),
    ("billing-v1", "billing-bot", "billing-lora-v1", 0.35),
)
FINAL = ("promoted", "rolled_back", "paused")
#: the story's ending: the better adapter promoted, the worse one rolled back
INTENDED = {"support-v2": "promoted", "billing-v1": "rolled_back"}


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {timeout}s")


def _experiments(emulator: str, short: bool) -> list[dict[str, Any]]:
    policy = {
        "min_units_per_arm": 15 if short else 40,
        "min_step_seconds": 1.0 if short else 4.0,
        "interval_seconds": 0.5,
        "guardrails": [
            {"metric": "error_rate", "margin": 0.02},
            {"metric": "escalation_rate", "margin": 0.02},
        ],
    }
    return [
        {
            "name": name,
            "route": route,
            "description": f"{adapter} vs the base model",
            "control": {
                "base_url": emulator,
                "model": BASE_MODEL,
                "prompt_price_per_million": 0.1,
                "completion_price_per_million": 0.4,
            },
            "treatment": {
                "base_url": emulator,
                "model": adapter,
                "prompt_price_per_million": 0.1,
                "completion_price_per_million": 0.4,
            },
            "treatment_percent": 5,
            "policy": policy,
        }
        for name, route, adapter, _ in EXPERIMENTS
    ]


class Workdir:
    """The demo's folder of configs and logs: removed when the demo succeeds, kept (and its
    path printed) when it fails or is interrupted, so that a failed run can be diagnosed."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.path = Path(tempfile.mkdtemp(prefix="abgate-demo-"))
        self.ok = False

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.ok and exc_type is None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        logs = ", ".join(sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*.log")))
        self.console.print(
            f"the demo's logs are kept in {self.path}" + (f" ({logs})" if logs else ""),
            markup=False,
            highlight=False,
        )


def run(*, short: bool, reports: Path, timeout: float) -> int:
    console = Console()
    with Workdir(console) as work:
        try:
            code = _run(console, work.path, short=short, reports=reports, timeout=timeout)
        except RuntimeError as exc:  # a process did not start: its log says why
            console.print(f"abgate demo: error: {exc}", markup=False, highlight=False)
            code = 1
        work.ok = code == 0
        return code


def _run(console: Console, tmp: Path, *, short: bool, reports: Path, timeout: float) -> int:
    token = secrets.token_hex(16)
    with EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds:
        emu_port, gw_port = free_port(), free_port()
        emu_url, gw_url = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gw_port}"
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "ABGATE_REDIS_URL": rds.url,
            "ABGATE_ADMIN_TOKEN": token,
            "ABGATE_LOG_LEVEL": "WARNING",
            "ABGATE_LOG_FORMAT": "text",
        }
        emu_cmd = [
            sys.executable,
            "-m",
            "router",
            "emulate",
            "--port",
            str(emu_port),
            "--base-model",
            BASE_MODEL,
            "--ttft-ms",
            "5",
            "--quality",
            "0.6",
        ]
        for _, _, adapter, quality in EXPERIMENTS:
            path = tmp / "adapters" / adapter
            path.mkdir(parents=True)
            (path / "adapter_config.json").write_text(
                json.dumps({"peft_type": "LORA", "base_model_name_or_path": BASE_MODEL, "r": 16})
            )
            emu_cmd += ["--lora", f"{adapter}={path}", "--profile", f"{adapter}:quality={quality}"]
        config = tmp / "abgate.yaml"
        config.write_text(json.dumps({"experiments": _experiments(emu_url + "/v1", short)}))
        gw_cmd = [
            sys.executable,
            "-m",
            "router",
            "serve",
            "--config",
            str(config),
            "--port",
            str(gw_port),
        ]
        ctl_cmd = [
            sys.executable,
            "-m",
            "router",
            "controller",
            "--tick",
            "0.25",
            "--lock-ttl",
            "3",
        ]
        console.print(f"redis       {rds.url}")
        console.print(
            f"emulator    {emu_url}  (base {BASE_MODEL}; adapters "
            + ", ".join(f"{a} quality {q:.0%}" for _, _, a, q in EXPERIMENTS)
            + ")"
        )
        console.print(f"gateway     {gw_url}  (admin token in ABGATE_ADMIN_TOKEN)")
        console.print("controller  ramps 5 -> 10 -> 25 -> 50 % and promotes, or rolls back\n")
        with (
            _process(emu_cmd, env, tmp / "emulator.log") as emu,
            _process(gw_cmd, env, tmp / "gateway.log") as gw,
            _process(ctl_cmd, env, tmp / "controller.log"),
        ):
            _wait_http(emu_url + "/health", emu, tmp / "emulator.log")
            _wait_http(gw_url + "/readyz", gw, tmp / "gateway.log")
            outcome = asyncio.run(_drive(console, gw_url, token, short, timeout))
            return _finish(console, gw_url, token, reports, outcome)
    return 1  # pragma: no cover


async def _drive(
    console: Console, gw_url: str, token: str, short: bool, budget: float
) -> dict[str, str]:
    population = Population(gw_url, seed=7, requests_per_user=2)
    route_of = {name: route for name, route, _, _ in EXPERIMENTS}
    auth = {"Authorization": f"Bearer {token}"}
    states: dict[str, str] = {}
    deadline = time.monotonic() + budget
    async with httpx.AsyncClient(base_url=gw_url, headers=auth, timeout=30) as admin:
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                # users only where an experiment still runs: a route whose experiment has
                # ended teaches the controller nothing and would only slow the rest down
                routes = [r for n, r in route_of.items() if states.get(n) not in FINAL]
                await population.run(routes, 30 if short else 40, concurrency=8)
                try:
                    resp = await admin.get("/admin/experiments")
                except httpx.HTTPError:  # a slow moment of the gateway: ask again next round
                    continue
                if resp.status_code != 200:
                    continue
                data = resp.json()
                live.update(_view(console, data, population))
                states = {
                    s["experiment"]["name"]: s["experiment"]["state"] for s in data["experiments"]
                }
                if all(s in FINAL for s in states.values()):
                    break
            else:
                console.print(f"[red]the experiments did not end within {budget:g} s[/red]")
    console.print()  # the live view's last frame may end without a newline
    if population.stats.errors:
        console.print(
            f"[red]{len(population.stats.errors)} client errors[/red], e.g. "
            f"{population.stats.errors[0]}"
        )
    return states


def _view(console: Console, data: dict[str, Any], population: Population) -> Table:
    columns = [
        Column("experiment"), Column("route"), Column("state"), Column("share", justify="right"),
        Column("requests c/t", justify="right"), Column("thumbs-up c/t", justify="right"),
        Column("last change", "text"),
    ]  # fmt: skip
    rows = []
    for s in data["experiments"]:
        e = s["experiment"]
        route = e["route"]
        req = {a: population.stats.requests[(route, a)] for a in ("control", "treatment")}
        up = {a: population.stats.thumbs_up[(route, a)] for a in ("control", "treatment")}
        rate = {a: f"{up[a] / req[a]:.0%}" if req[a] else "-" for a in req}
        rows.append(
            [
                e["name"], route, e["state"], f"{e['treatment_percent']:g}%",
                f"{req['control']}/{req['treatment']}", f"{rate['control']}/{rate['treatment']}",
                _clip(e["state_reason"], 100),  # a live view must stay a few lines tall
            ]
        )  # fmt: skip
    title = f"abgate demo: {population.stats.users} simulated users so far"
    return fitted(console, columns, rows, title=title)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finish(
    console: Console, gw_url: str, token: str, reports: Path, states: dict[str, str]
) -> int:
    reports.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {token}"}
    for name, _, _, _ in EXPERIMENTS:
        data = httpx.get(f"{gw_url}/admin/experiments/{name}/report", headers=auth, timeout=30)
        report = Report.model_validate(data.json())
        path = reports / f"{name}.html"
        part = path.with_name(path.name + ".part")
        part.write_text(render_html(report), encoding="utf-8")
        part.replace(path)
        console.print(f"{name}: {states.get(name, '?')} -> report {path.resolve()}")
        for d in report.decisions:
            console.print(f"    {d.action} at {d.share:g}%: {d.reasons[0][:110]}", markup=False)
    ok = all(states.get(k) == v for k, v in INTENDED.items())
    console.print(
        "\nthe better adapter was promoted and the worse one rolled back"
        if ok
        else f"\n[red]unexpected end states: {states}[/red]"
    )
    return 0 if ok else 1
