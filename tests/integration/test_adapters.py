"""LoRA adapters on three real emulator replicas: load and probe, a failing replica, hot swap
under streaming load, a replica killed and restarted, both error shapes, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.runtime.embedded_redis import EmbeddedRedis, free_port
from tests.procs import ROOT, Proc, adapter_dir, base_env, emulator, gateway

pytestmark = pytest.mark.integration

TOKEN = "lora-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "Where is my parcel?"}]


def _adapter(tmp: Path, name: str, rank: int = 8) -> str:
    d = adapter_dir(tmp, name)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    return str(d)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("lora")
    ports = [free_port() for _ in range(3)]
    common = [
        "--base-model",
        "base",
        "--lora-load-latency-ms",
        "50",
        "--profile",  # v2's streams last seconds: the hot swap's drain has to wait for them
        "v2:ttft_ms=2500,tokens_per_second=10",
        "--profile",
        "v3:tokens_per_second=40",
    ]
    with (
        EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds,
        emulator(tmp, *common, port=ports[0]) as e1,
        emulator(tmp, *common, "--error-format", "flat", port=ports[1]) as e2,
        emulator(tmp, *common, port=ports[2]) as e3,
        emulator(tmp, "--base-model", "base", runtime_lora=False) as off,
        gateway(
            tmp,
            {},
            rds.url,
            admin_token=TOKEN,
            health_interval_seconds="0.3",
            reconcile_interval_seconds="0.5",
            outlier_ejection_seconds="1",
        ) as gw,
    ):
        yield {
            "tmp": tmp,
            "emus": [e1, e2, e3],
            "off": off,
            "gw": gw,
            "ports": ports,
            "common": common,
        }


def admin(gw: Proc, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gw.url + "/admin" + path, headers=AUTH, timeout=120, **kw)


def record(gw: Proc, name: str) -> Any:
    """The registry's record of adapter `name` as the admin API lists it, or None."""
    adapters = admin(gw, "GET", "/adapters").json()["adapters"]
    return next((a for a in adapters if a["name"] == name), None)


def urls(emus: list[Proc]) -> list[str]:
    return [e.url + "/v1" for e in emus]


def served(emu: Proc) -> set[str]:
    return {m["id"] for m in httpx.get(emu.url + "/v1/models").json()["data"]}


def test_load_probe_and_bad_input(cluster: dict[str, Any]) -> None:
    gw, emus, tmp = cluster["gw"], cluster["emus"], cluster["tmp"]
    path = _adapter(tmp, "v2")
    resp = admin(
        gw, "POST", "/adapters", json={"name": "v2", "path": path, "base_urls": urls(emus)}
    )
    assert resp.status_code == 201, resp.text
    record = resp.json()
    assert record["state"] == "ready"
    assert {s["state"] for s in record["replicas"].values()} == {"ready"}
    assert all("v2" in served(e) for e in emus)
    # idempotent; "already loaded" (flat shape on the second replica) counts as success
    httpx.post(emus[1].url + "/v1/load_lora_adapter", json={"lora_name": "v2b", "lora_path": path})
    again = admin(
        gw, "POST", "/adapters", json={"name": "v2b", "path": path, "base_urls": urls(emus)}
    )
    assert again.json()["state"] == "ready", again.text
    # bad input: nothing changes
    reuse = admin(
        gw,
        "POST",
        "/adapters",
        json={"name": "v2", "path": _adapter(tmp, "other"), "base_urls": urls(emus)},
    )
    assert reuse.status_code == 409 and "immutable" in reuse.json()["error"]["message"]
    assert admin(gw, "GET", "/adapters").json()["adapters"][0]["path"] == path
    missing = admin(
        gw,
        "POST",
        "/adapters",
        json={"name": "ghost", "path": "/nowhere", "base_urls": urls(emus)[:1]},
    )
    assert missing.json()["state"] == "failed"
    assert (
        "No adapter found for /nowhere" in next(iter(missing.json()["replicas"].values()))["reason"]
    )
    big = admin(
        gw,
        "POST",
        "/adapters",
        json={"name": "big", "path": _adapter(tmp, "big", 64), "base_urls": urls(emus)[:1]},
    )
    assert big.json()["state"] == "failed"
    assert "rank 64 is greater than max_lora_rank 16" in str(big.json()["replicas"])
    assert admin(gw, "POST", "/adapters", json={"name": "x", "path": ""}).status_code == 422
    assert admin(gw, "DELETE", "/adapters/unknown").status_code == 404
    # vLLM's runtime-update routes are not part of the gateway's data plane
    for route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        assert httpx.post(
            gw.url + route, json={"lora_name": "v2", "lora_path": path}
        ).status_code in (404, 405)


def test_failing_replica_is_marked_and_gets_no_treatment_traffic(cluster: dict[str, Any]) -> None:
    gw, emus, off, tmp = cluster["gw"], cluster["emus"], cluster["off"], cluster["tmp"]
    targets = [*urls(emus), off.url + "/v1"]
    resp = admin(
        gw,
        "POST",
        "/adapters",
        json={"name": "v2p", "path": _adapter(tmp, "v2p"), "base_urls": targets},
    )
    record = resp.json()
    assert record["state"] == "failed"
    assert record["replicas"][off.url + "/v1"]["state"] == "failed"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in record["replicas"][off.url + "/v1"]["reason"]
    exp = {
        "name": "partial",
        "route": "partial-route",
        "treatment_percent": 100,
        "control": {"base_urls": targets, "model": "base"},
        "treatment": {"base_urls": targets, "model": "v2p"},
    }
    assert admin(gw, "POST", "/experiments", json=exp).status_code == 201
    time.sleep(1.0)  # a health check has read every replica's /v1/models
    for i in range(40):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"X-User-Id": f"p{i}"},
            json={"model": "partial-route", "messages": MSG},
            timeout=30,
        )
        assert r.status_code == 200 and "x-abgate-fallback" not in r.headers
        assert r.json()["model"] == "v2p"


def test_hot_swap_under_streaming_load(cluster: dict[str, Any]) -> None:
    gw, emus, tmp = cluster["gw"], cluster["emus"], cluster["tmp"]
    for name in ("v2", "v3"):
        body = {"name": name, "path": _adapter(tmp, name), "base_urls": urls(emus)}
        assert admin(gw, "POST", "/adapters", json=body).json()["state"] == "ready"
    exp = {
        "name": "swap",
        "route": "swap-route",
        "treatment_percent": 100,
        "control": {"base_urls": urls(emus), "model": "base"},
        "treatment": {"base_urls": urls(emus), "model": "v2"},
    }
    assert admin(gw, "POST", "/experiments", json=exp).status_code == 201
    results: list[tuple[float, float, str]] = []  # (started, finished, model), wall clock
    errors: list[str] = []
    stop = threading.Event()

    def streamer(k: int) -> None:
        with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
            i = 0
            while not stop.is_set():
                i += 1
                started = time.time()
                try:
                    chunks = list(
                        client.chat.completions.create(
                            model="swap-route",
                            messages=MSG,
                            stream=True,
                            max_tokens=12,  # type: ignore[arg-type]
                            extra_headers={"X-User-Id": f"s{k}-{i}"},
                        )
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    assert text
                    results.append((started, time.time(), chunks[0].model))
                except Exception as exc:
                    errors.append(repr(exc))

    watched: list[tuple[float, str]] = []  # (when, v2's state in the registry), wall clock
    done_watching = threading.Event()

    def watcher() -> None:
        while not done_watching.wait(0.05):
            try:
                rec = record(gw, "v2")
            except httpx.HTTPError:  # the gateway stopped: a failed test ended
                return
            watched.append((time.time(), rec["state"] if rec else "gone"))

    threads = [threading.Thread(target=streamer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    watching = threading.Thread(target=watcher, daemon=True)
    watching.start()
    time.sleep(1.0)
    resp = admin(
        gw,
        "POST",
        "/experiments/swap/swap",
        json={"treatment_model": "v3", "unload_old": True, "drain_seconds": 30},
    )
    swapped = time.time()
    assert resp.status_code == 200, resp.text
    assert resp.json()["treatment"]["model"] == "v3"
    deadline = time.monotonic() + 30
    while sum(1 for s, _, m in results if s > swapped and m == "v3") < 6:
        if errors or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert {m for s, _, m in results if s > swapped} == {"v3"}
    v2_done = max(f for s, f, m in results if m == "v2")
    deadline = time.monotonic() + 20
    while (rec := record(gw, "v2"))["state"] != "unloaded":
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)
    done_watching.set()
    watching.join(timeout=30)
    assert all("v2" not in served(e) for e in emus)
    # the drain: the registry showed v2 draining while a v2 stream (seconds long) was still
    # open, and unloaded it only once the last v2 stream had ended
    draining = [when for when, state in watched if state == "draining"]
    assert draining, watched
    assert any(m == "v2" and s < draining[0] < f for s, f, m in results), (draining, results)
    assert min(s["at"] for s in rec["replicas"].values()) >= v2_done - 0.1, (rec, v2_done)
    audit = admin(gw, "GET", "/audit", params={"experiment": "swap"}).json()["entries"]
    assert audit[0]["action"] == "swap" and audit[0]["after"]["treatment"]["model"] == "v3"
    # swapping to an adapter that is not ready, or unknown, is refused and changes nothing
    version = admin(gw, "GET", "/experiments/swap").json()["version"]
    assert (
        admin(gw, "POST", "/experiments/swap/swap", json={"treatment_model": "ghost"}).status_code
        == 409
    )
    assert (
        admin(gw, "POST", "/experiments/swap/swap", json={"treatment_model": "nope"}).status_code
        == 404
    )
    assert admin(gw, "DELETE", "/adapters/v3").status_code == 409  # in use
    assert admin(gw, "GET", "/experiments/swap").json()["version"] == version


def test_replica_killed_and_restarted(cluster: dict[str, Any]) -> None:
    gw, emus, tmp, ports = cluster["gw"], cluster["emus"], cluster["tmp"], cluster["ports"]
    victim = emus[2]
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = httpx.post(
                    gw.url + "/v1/chat/completions",
                    timeout=30,
                    headers={"X-User-Id": f"k{i}"},
                    json={"model": "swap-route", "messages": MSG, "max_tokens": 3},
                )
                if r.status_code != 200 or "x-abgate-fallback" in r.headers:
                    errors.append(f"{r.status_code} {r.headers.get('x-abgate-fallback')}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(0.5)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    time.sleep(2.0)
    # restart on the same port, without the adapters it had
    with emulator(tmp, *cluster["common"], port=ports[2]) as reborn:
        deadline = time.monotonic() + 15
        while "v3" not in served(reborn):
            assert time.monotonic() < deadline, "the reconciler did not reload v3"
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        thread.join(timeout=30)
        assert errors == []
        rec = next(a for a in admin(gw, "GET", "/adapters").json()["adapters"] if a["name"] == "v3")
        assert rec["state"] == "ready"
        healthy = f'abgate_replica_healthy{{replica="http://127.0.0.1:{ports[2]}/v1"}} 1.0'
        deadline = time.monotonic() + 10
        while healthy not in (metrics := httpx.get(gw.url + "/metrics").text):
            assert time.monotonic() < deadline, [m for m in metrics.splitlines() if "replica" in m]
            time.sleep(0.2)
        ready = f'abgate_adapter_state{{adapter="v3",replica="http://127.0.0.1:{ports[2]}/v1",'
        assert any(
            line.startswith(ready) and 'state="ready"} 1.0' in line for line in metrics.splitlines()
        )


def test_adapters_cli(cluster: dict[str, Any]) -> None:
    gw, emus, tmp = cluster["gw"], cluster["emus"], cluster["tmp"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(gw, *args)

    live = emus[:2]  # the third replica was killed by the previous test
    bases = [arg for u in urls(live) for arg in ("--base-url", u)]
    loaded = cli("load", "v4", "--path", _adapter(tmp, "v4"), *bases)
    assert loaded.returncode == 0, loaded.stderr
    assert "v4: ready" in loaded.stdout
    listed = cli("list")
    assert listed.returncode == 0 and "v4" in listed.stdout and "ready" in listed.stdout
    unloaded = cli("unload", "v4", "--drain-seconds", "1")
    assert unloaded.returncode == 0 and "v4: unloaded" in unloaded.stdout
    assert all("v4" not in served(e) for e in live)
    bad = cli("load", "v5", "--path", "/missing", *bases)
    assert bad.returncode == 1 and "adapter v5 is failed" in bad.stderr
    swap = cli("swap", "swap", "nope")
    assert swap.returncode == 1 and "404" in swap.stderr


def test_start_time_adapter_is_listed_and_unloaded_by_swap(cluster: dict[str, Any]) -> None:
    """An adapter the server loaded at its start (the emulator's --lora, vLLM's --lora-modules)
    is in `adapters list`, and `adapters swap --unload-old` away from it unloads it; with the
    base model as the old treatment, --unload-old is refused loudly and nothing changes."""
    gw, tmp = cluster["gw"], cluster["tmp"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(gw, *args)

    start_path = _adapter(tmp, "st-v1")
    with emulator(tmp, "--base-model", "base", "--lora", f"st-v1={start_path}") as emu:
        target = [emu.url + "/v1"]
        exp = {
            "name": "static",
            "route": "static-route",
            "treatment_percent": 100,
            "control": {"base_urls": target, "model": "base"},
            "treatment": {"base_urls": target, "model": "st-v1"},
        }
        assert admin(gw, "POST", "/experiments", json=exp).status_code == 201
        listed = cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        record = next(a for a in json.loads(listed.stdout)["adapters"] if a["name"] == "st-v1")
        assert record["origin"] == "server_start" and record["path"] == start_path
        assert record["state"] == "ready" and record["urls"] == target
        assert "at its start" in record["replicas"][target[0]]["reason"]
        table = cli("list")
        assert "st-v1" in table.stdout and "loaded by the server at its start" in table.stdout
        loaded = cli("load", "st-v2", "--path", _adapter(tmp, "st-v2"), "--experiment", "static")
        assert loaded.returncode == 0, loaded.stderr
        swapped = cli("swap", "static", "st-v2", "--unload-old")
        assert swapped.returncode == 0, swapped.stderr
        deadline = time.monotonic() + 20
        while "st-v1" in served(emu):
            assert time.monotonic() < deadline, "swap --unload-old left st-v1 loaded"
            time.sleep(0.1)
        gone = next(
            a for a in admin(gw, "GET", "/adapters").json()["adapters"] if a["name"] == "st-v1"
        )
        assert gone["state"] == "unloaded", gone
        # a treatment on the base model: there is no adapter to unload, and the CLI says so
        exp2 = {**exp, "name": "static-base", "route": "static-base-route"}
        exp2["treatment"] = {"base_urls": target, "model": "base"}
        assert admin(gw, "POST", "/experiments", json=exp2).status_code == 201
        refused = cli("swap", "static-base", "st-v2", "--unload-old")
        assert refused.returncode == 1 and "cannot unload 'base'" in refused.stderr
        assert admin(gw, "GET", "/experiments/static-base").json()["treatment"]["model"] == "base"
        for name in ("static", "static-base"):  # leave nothing routed to this emulator
            admin(gw, "DELETE", f"/experiments/{name}")


def test_swap_unloads_a_start_time_adapter_only_from_the_treatment_replicas(
    cluster: dict[str, Any],
) -> None:
    """Two servers loaded one adapter at their start; only one of them is the experiment's
    treatment. `swap --unload-old` unloads it there and leaves the other server (here the
    replica of another experiment's control, e.g. a default upstream in production) serving it."""
    gw, tmp = cluster["gw"], cluster["tmp"]
    start_path = _adapter(tmp, "sx-v1")
    start = ["--base-model", "base", "--lora", f"sx-v1={start_path}"]
    with emulator(tmp, *start) as inside, emulator(tmp, *start) as outside:
        mine, other = inside.url + "/v1", outside.url + "/v1"
        exp = {
            "name": "sx",
            "route": "sx-route",
            "treatment_percent": 100,
            "control": {"base_urls": [mine], "model": "base"},
            "treatment": {"base_urls": [mine], "model": "sx-v1"},
        }
        bystander = {
            "name": "sx-other",
            "route": "sx-other-route",
            "treatment_percent": 0,
            "control": {"base_urls": [other], "model": "base"},
            "treatment": {"base_urls": [other], "model": "base"},
        }
        try:
            for body in (exp, bystander):
                assert admin(gw, "POST", "/experiments", json=body).status_code == 201
            deadline = time.monotonic() + 20
            while True:  # discovery finds it on both servers (a health check must see both)
                rec = record(gw, "sx-v1")
                if rec is not None and set(rec["urls"]) == {mine, other}:
                    break
                assert time.monotonic() < deadline, rec
                time.sleep(0.1)
            assert rec["origin"] == "server_start" and rec["state"] == "ready", rec
            body = {"name": "sx-v2", "path": _adapter(tmp, "sx-v2"), "experiment": "sx"}
            assert admin(gw, "POST", "/adapters", json=body).json()["state"] == "ready"
            swapped = admin(
                gw,
                "POST",
                "/experiments/sx/swap",
                json={"treatment_model": "sx-v2", "unload_old": True, "drain_seconds": 5},
            )
            assert swapped.status_code == 200, swapped.text
            while "sx-v1" in served(inside):
                assert time.monotonic() < deadline, "swap --unload-old left sx-v1 loaded"
                time.sleep(0.1)
            while (rec := record(gw, "sx-v1"))["replicas"][mine]["state"] != "unloaded":
                assert time.monotonic() < deadline, rec
                time.sleep(0.1)
            assert "sx-v1" in served(outside)  # the server outside the experiment keeps it
            assert rec["replicas"][other]["state"] == "ready", rec
        finally:
            for name in ("sx", "sx-other"):  # leave nothing routed to these emulators
                admin(gw, "DELETE", f"/experiments/{name}")


def _cli(gw: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`abgate adapters ARGS` against the gateway, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "router", "adapters", *args, "--url", gw.url, "--token", TOKEN],
        env=base_env(COLUMNS="200"), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
