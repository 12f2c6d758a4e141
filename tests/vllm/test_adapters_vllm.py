"""The LoRA adapter lifecycle against the real vLLM (tests/vllm/server.py), through a real gateway
and redis-server and the `abgate adapters` CLI: load and probe, a hot swap under streaming load,
loads vLLM refuses, the adapter it loaded at its start, unload, and the reconciler after a vLLM
restart. The same scenarios against the emulator: tests/integration/test_adapters.py.

Every adapter loaded here is named ``lc-...`` with a random suffix and unloaded at the end of
its test, so the tests can share a vLLM server with others; adapter ``a`` (loaded at the
server's start) is only unloaded by the restart test, which needs a server of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.procs import ROOT, Proc, base_env, emulator, gateway, metric_sum, wait_for
from tests.vllm.server import VllmServer, models

TOKEN = "lc-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "def main():"}]


@pytest.fixture
def gw(tmp_path: Path, redis_url: str) -> Iterator[Proc]:
    with gateway(
        tmp_path, {}, redis_url, admin_token=TOKEN, health_interval_seconds="0.3",
        reconcile_interval_seconds="0.5", outlier_ejection_seconds="1",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture
def names(vllm: VllmServer) -> Iterator[list[str]]:
    """Adapter names for this test (``lc-<what>-<random>``), unloaded from vLLM at its end."""
    made: list[str] = []
    yield made
    for name in made:
        assert name.startswith("lc-")
        httpx.post(vllm.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)


def fresh(names: list[str], what: str) -> str:
    name = f"lc-{what}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


def cli(gw: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "adapters", *args, "--url", gw.url, "--token", TOKEN],
        env=base_env(COLUMNS="200"), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def admin(gw: Proc, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gw.url + "/admin" + path, headers=AUTH, timeout=120, **kw)


def record(gw: Proc, name: str) -> dict[str, Any] | None:
    listed = admin(gw, "GET", "/adapters").json()["adapters"]
    return next((a for a in listed if a["name"] == name), None)


def served(server: VllmServer) -> set[str]:
    return {str(m["id"]) for m in models(server)}


def v1(server: VllmServer) -> str:
    return server.url + "/v1"


def chat(url: str, model: str, user: str = "u", max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", headers={"X-User-Id": user}, timeout=60,
        json={"model": model, "messages": MSG, "max_tokens": max_tokens, "temperature": 0},
    )  # fmt: skip


def start_experiment(gw: Proc, name: str, treatment: str, urls: list[str], control: str) -> str:
    """An experiment sending every user to `treatment` on `urls`; its route."""
    exp = {
        "name": name, "route": f"{name}-route", "treatment_percent": 100,
        "control": {"base_urls": urls, "model": control},
        "treatment": {"base_urls": urls, "model": treatment},
    }  # fmt: skip
    resp = admin(gw, "POST", "/experiments", json=exp)
    assert resp.status_code == 201, resp.text
    return str(exp["route"])


def checked(gw: Proc, *urls: str) -> None:
    """Wait until the gateway's health checks have read each replica's /v1/models."""

    def done() -> bool:
        replicas = httpx.get(gw.url + "/readyz", timeout=10).json()["replicas"]
        return all(replicas.get(u, {}).get("check") == "health" for u in urls)

    wait_for("a health check of " + ", ".join(urls), done, timeout=30)


def test_load_probes_and_serves(vllm: VllmServer, gw: Proc, names: list[str]) -> None:
    """`adapters load` loads on vLLM and probes: ready, listed, and it answers through the
    gateway as the treatment (its own name in the answer)."""
    name = fresh(names, "b")
    loaded = cli(gw, "load", name, "--path", str(vllm.adapter("b")), "--base-url", v1(vllm))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert f"{name}: ready" in loaded.stdout
    assert name in served(vllm)
    rec = record(gw, name)
    assert rec is not None and rec["state"] == "ready" and rec["origin"] == "admin"
    assert rec["replicas"][v1(vllm)]["state"] == "ready"
    direct = chat(vllm.url, name)
    assert direct.status_code == 200 and direct.json()["model"] == name
    route = start_experiment(gw, "load", name, [v1(vllm)], vllm.model)
    through = chat(gw.url, route)
    assert through.status_code == 200, through.text
    assert through.json()["model"] == name and "x-abgate-fallback" not in through.headers


def test_unload_removes_it_from_vllm(vllm: VllmServer, gw: Proc, names: list[str]) -> None:
    """`adapters unload`: gone from /v1/models, vLLM answers 404 for it, the registry says
    unloaded."""
    name = fresh(names, "u")
    assert (
        cli(gw, "load", name, "--path", str(vllm.adapter("b")), "--base-url", v1(vllm)).returncode
        == 0
    )
    assert chat(vllm.url, name).status_code == 200
    unloaded = cli(gw, "unload", name, "--drain-seconds", "1")
    assert unloaded.returncode == 0, unloaded.stderr
    assert f"{name}: unloaded" in unloaded.stdout
    assert name not in served(vllm)
    gone = chat(vllm.url, name)
    assert gone.status_code == 404 and "does not exist" in gone.text
    rec = record(gw, name)
    assert rec is not None and rec["state"] == "unloaded"


@pytest.mark.parametrize(
    ("folder", "status", "reason"),
    [
        ("big", 500, "LoRA rank 16 is greater than max_lora_rank 8"),
        ("missing", 404, "No adapter found"),
    ],
)
def test_a_load_vllm_refuses_is_failed_and_gets_no_traffic(
    vllm: VllmServer, gw: Proc, names: list[str], folder: str, status: int, reason: str
) -> None:
    """vLLM's refusal (its status and reason) reaches the registry and the CLI; the adapter is
    failed, and an experiment pointing at it keeps every user on control without sending a
    request for it to vLLM."""
    name = fresh(names, folder)
    bad = cli(gw, "load", name, "--path", str(vllm.adapter(folder)), "--base-url", v1(vllm))
    assert bad.returncode == 1 and f"adapter {name} is failed" in bad.stderr, bad.stderr
    assert f"HTTP {status}" in bad.stdout and reason in bad.stdout, bad.stdout
    rec = record(gw, name)
    assert rec is not None and rec["state"] == "failed"
    shown = rec["replicas"][v1(vllm)]["reason"]
    assert reason in shown
    # vLLM hides paths under /root, /home, /tmp... as "<path>": the registry names it
    assert "<path>" not in shown or f"(path {vllm.adapter(folder)})" in shown, shown
    assert name not in served(vllm)
    route = start_experiment(gw, f"refused-{folder}", name, [v1(vllm)], vllm.model)
    checked(gw, v1(vllm))
    for i in range(8):
        r = chat(gw.url, route, user=f"r{i}")
        assert r.status_code == 200, r.text
        assert r.json()["model"] == vllm.model  # control answered
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    # the gateway knew no replica serves it: nothing for it went to vLLM (no 404 from vLLM)
    assert metric_sum(metrics, "abgate_upstream_errors_total", reason="status_404") == 0
    assert metric_sum(metrics, "abgate_upstream_errors_total", reason="fallback_status_404") == 0


def test_start_time_adapter_is_in_the_registry(vllm: VllmServer, gw: Proc) -> None:
    """Adapter a, loaded by vLLM at its start (--lora-modules), is listed with its path as
    loaded at the server's start, is ready, and serves as a treatment."""
    route = start_experiment(gw, "static", "a", [v1(vllm)], vllm.model)
    listed = cli(gw, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rec = next(a for a in json.loads(listed.stdout)["adapters"] if a["name"] == "a")
    assert rec["origin"] == "server_start" and rec["state"] == "ready"
    assert rec["path"] == str(vllm.adapter("a")) and rec["base_model"] == vllm.model
    assert "at its start" in rec["replicas"][v1(vllm)]["reason"]
    assert "loaded by the server at its start" in cli(gw, "list").stdout
    r = chat(gw.url, route)
    assert r.status_code == 200 and r.json()["model"] == "a"
    assert "a" in served(vllm)


def test_hot_swap_under_streaming_load(vllm: VllmServer, gw: Proc, names: list[str]) -> None:
    """Swap v1 -> v2 while several clients stream through the gateway: no client error, new
    requests go to v2, the registry shows v1 draining while a v1 stream is still open, and v1
    leaves vLLM's /v1/models only after its last stream ended. The streams are long (400 tokens,
    end of sequence ignored) so that the drain has something to wait for."""
    old, new = fresh(names, "v1"), fresh(names, "v2")
    for name, folder in ((old, "a"), (new, "b")):
        out = cli(gw, "load", name, "--path", str(vllm.adapter(folder)), "--base-url", v1(vllm))
        assert out.returncode == 0, out.stdout + out.stderr
    route = start_experiment(gw, "swap", old, [v1(vllm)], vllm.model)
    results: list[tuple[float, float, str]] = []  # (started, finished, model), wall clock
    errors: list[str] = []
    stop = threading.Event()
    gone_at: list[float] = []
    draining_at: list[float] = []  # when the registry was first seen with v1 draining

    def streamer(k: int) -> None:
        with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
            i = 0
            while not stop.is_set():
                i += 1
                started = time.time()
                try:
                    chunks = list(
                        client.chat.completions.create(
                            model=route,
                            messages=MSG,
                            stream=True,  # type: ignore[arg-type]
                            max_tokens=400,
                            extra_headers={"X-User-Id": f"s{k}-{i}"},
                            extra_body={"ignore_eos": True},
                        )
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    assert text, chunks
                    results.append((started, time.time(), chunks[0].model))
                except Exception as exc:
                    errors.append(repr(exc))

    def watch() -> None:  # when the registry shows v1 draining, and when v1 leaves vLLM's list
        while not stop.wait(0.05) and not gone_at:
            try:
                if not draining_at and (r := record(gw, old)) and r["state"] == "draining":
                    draining_at.append(time.time())
                if old not in served(vllm):
                    gone_at.append(time.time())
            except httpx.HTTPError as exc:
                errors.append(f"watch: {exc!r}")
                return

    threads = [threading.Thread(target=streamer, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    try:
        wait_for("streams on v1", lambda: len(results) >= 4, timeout=60)
        swapped = cli(gw, "swap", "swap", new, "--unload-old")
        swapped_at = time.time()
        assert swapped.returncode == 0, swapped.stderr
        assert f"treatment {old} -> {new}" in swapped.stdout
        wait_for("streams on v2", lambda: sum(m == new for *_, m in results) >= 8, timeout=60)
        wait_for(f"{old} unloaded", lambda: gone_at, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert {m for s, _, m in results if s > swapped_at} == {new}
    assert any(m == old for *_, m in results)
    old_done = max(f for _, f, m in results if m == old)
    assert draining_at, "the registry was never seen with v1 draining"
    assert any(m == old and s < draining_at[0] < f for s, f, m in results), (draining_at, results)
    assert gone_at[0] >= old_done - 0.1, (gone_at, old_done)  # after its streams drained
    rec = wait_for(f"{old} unloaded in the registry",
                   lambda: (r := record(gw, old)) and r["state"] == "unloaded" and r)  # fmt: skip
    assert rec["replicas"][v1(vllm)]["at"] >= old_done - 0.1
    assert new in served(vllm)


def test_load_goes_to_a_vllm_and_an_emulator_replica(
    vllm: VllmServer, gw: Proc, names: list[str], tmp_path: Path
) -> None:
    """A mixed pool (the real vLLM and an emulator replica serving the same model name): the
    adapter loads on both, and the treatment's traffic reaches both."""
    with emulator(tmp_path, "--base-model", vllm.model) as emu:
        urls = [v1(vllm), emu.url + "/v1"]
        name = fresh(names, "mix")
        bases = [arg for u in urls for arg in ("--base-url", u)]
        out = cli(gw, "load", name, "--path", str(vllm.adapter("b")), *bases)
        assert out.returncode == 0, out.stdout + out.stderr
        rec = record(gw, name)
        assert rec is not None and {s["state"] for s in rec["replicas"].values()} == {"ready"}
        assert set(rec["replicas"]) == set(urls)
        route = start_experiment(gw, "mixed", name, urls, vllm.model)
        checked(gw, *urls)

        # vLLM's answers carry its system_fingerprint ("vllm-<version>-..."), the emulator's none
        seen: set[str] = set()

        def both_served() -> bool:
            r = chat(gw.url, route, user=f"m{len(seen)}-{time.monotonic()}")
            assert r.status_code == 200 and r.json()["model"] == name, r.text
            assert "x-abgate-fallback" not in r.headers
            fingerprint = r.json().get("system_fingerprint") or ""
            seen.add("vllm" if fingerprint.startswith("vllm-") else "emulator")
            return seen == {"vllm", "emulator"}

        wait_for("treatment requests on both replicas", both_served, timeout=60)


@pytest.fixture
def own_vllm(vllm: VllmServer) -> VllmServer:
    """The session's vLLM when this suite started it (it may be restarted): an external one
    fails the test under CI and skips it elsewhere, before anything else starts."""
    if vllm.proc is None:
        why = "the vLLM server is external (ABGATE_TEST_VLLM_URL): it cannot be restarted here"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return vllm


def test_reconciler_reloads_adapters_after_vllm_restart(
    own_vllm: VllmServer, gw: Proc, names: list[str]
) -> None:
    """`swap --unload-old` away from the start-time adapter a unloads it from vLLM; after a vLLM
    restart (which forgets runtime loads and loads a again), the reconciler reloads the
    runtime-loaded adapter and the registry shows a ready again. Needs a vLLM server this
    suite started (an external one cannot be restarted)."""
    name = fresh(names, "r")
    out = cli(gw, "load", name, "--path", str(own_vllm.adapter("b")), "--base-url", v1(own_vllm))
    assert out.returncode == 0, out.stdout + out.stderr
    route = start_experiment(gw, "restart", "a", [v1(own_vllm)], own_vllm.model)
    swapped = cli(gw, "swap", "restart", name, "--unload-old")
    assert swapped.returncode == 0, swapped.stderr
    wait_for("a unloaded from vLLM", lambda: "a" not in served(own_vllm), timeout=60)
    wait_for("a unloaded in the registry",
             lambda: (r := record(gw, "a")) and r["state"] == "unloaded")  # fmt: skip

    own_vllm.restart()  # returns once /health answers 200; it forgot every runtime load
    wait_for(f"the reconciler to reload {name}", lambda: name in served(own_vllm), timeout=60)
    # the reconciler's doing: it logs this before it reloads
    assert f"replica {v1(own_vllm)} lost adapter {name}; reloading" in gw.log.read_text()
    rec = wait_for(f"{name} ready", lambda: (r := record(gw, name)) and r["state"] == "ready" and r)
    assert rec["replicas"][v1(own_vllm)]["state"] == "ready"
    # a is back (--lora-modules); the registry follows what vLLM lists
    back = wait_for("a ready again",
                    lambda: (r := record(gw, "a")) and r["state"] == "ready" and r)  # fmt: skip
    assert "listed again" in back["replicas"][v1(own_vllm)]["reason"]
    r = wait_for("a treatment answer", lambda: (c := chat(gw.url, route)).status_code == 200 and c)
    assert r.json()["model"] == name
