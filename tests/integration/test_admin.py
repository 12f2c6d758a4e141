"""The admin API against three real gateway replicas sharing one real redis-server."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[list[Proc]]:
    tmp = tmp_path_factory.mktemp("replicas")
    config = {"experiments": [experiment("seeded", "seeded-route", emu.url, 10)]}
    with (
        gateway(tmp, config, stack_redis.url, admin_token=TOKEN) as a,
        gateway(tmp, config, stack_redis.url, admin_token=TOKEN) as b,
        gateway(tmp, config, stack_redis.url, admin_token=TOKEN) as c,
    ):
        yield [a, b, c]


def admin(gw: Proc, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    return httpx.request(method, gw.url + "/admin" + path, headers=headers, timeout=10, **kw)


def arm(gw: Proc, route: str, user: str) -> str:
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": route, "messages": MSG, "max_tokens": 2},
        headers={"X-User-Id": user},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.headers["x-abgate-arm"]


def wait_until(predicate: Any, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - t0


def new_exp(emu: Proc, name: str, route: str, percent: float, **extra: Any) -> dict[str, Any]:
    return experiment(name, route, emu.url, percent, **extra)


ROUTES = [
    ("GET", "/experiments"),
    ("POST", "/experiments"),
    ("GET", "/experiments/seeded"),
    ("PATCH", "/experiments/seeded"),
    ("DELETE", "/experiments/seeded"),
    *[
        ("POST", f"/experiments/seeded/{a}")
        for a in ("start", "rollback", "pause", "resume", "promote", "advance")
    ],
    ("POST", "/experiments/seeded/share"),
    ("GET", "/audit"),
]
MISSING = (
    "missing admin token: send Authorization: Bearer <token> "
    "(abgate CLI: --token or ABGATE_ADMIN_TOKEN)"
)
WRONG = "the admin token is not valid"


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic YWRtaW46c2VjcmV0", TOKEN])
def test_every_admin_route_needs_the_token(
    replicas: list[Proc], method: str, path: str, auth: str | None
) -> None:
    gw = replicas[0]
    before = httpx.get(gw.url + "/readyz").json()["config_version"]
    headers = {} if auth is None else {"Authorization": auth}
    body = {"treatment_percent": 50} if method == "PATCH" else None
    resp = httpx.request(method, gw.url + "/admin" + path, headers=headers, json=body)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["error"]["message"] == (WRONG if auth == "Bearer wrong" else MISSING)
    assert httpx.get(gw.url + "/readyz").json()["config_version"] == before


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, MISSING),
        ("", MISSING),
        ("Bearer", MISSING),
        ("Basic YWRtaW46c2VjcmV0", MISSING),
        (TOKEN, MISSING),  # the token without its scheme
        ("Bearer wrong", WRONG),
        ("bearer wrong", WRONG),
        (f"Bearer {TOKEN}x", WRONG),
        (f"Bearer {TOKEN[:-1]}", WRONG),
    ],
)
def test_a_wrong_token_is_told_apart_from_a_missing_one(
    replicas: list[Proc], auth: str | None, message: str
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    resp = httpx.get(replicas[0].url + "/admin/experiments", headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    error = resp.json()["error"]
    assert error["message"] == message
    assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
    ok = httpx.get(replicas[0].url + "/admin/experiments",
                   headers={"Authorization": f"bearer  {TOKEN}"})  # fmt: skip
    assert ok.status_code == 200, ok.text


def test_set_share_is_its_own_audited_action(replicas: list[Proc], emu: Proc) -> None:
    a, b, _ = replicas
    assert admin(a, "POST", "/experiments", json=new_exp(emu, "share", "share-route", 5)).is_success
    version = admin(a, "GET", "/experiments/share").json()["version"]

    resp = admin(a, "POST", "/experiments/share/share", headers={"If-Match": f'"{version}"'},
                 json={"treatment_percent": 30, "reason": "by hand"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.json()["treatment_percent"] == 30 and resp.json()["version"] == version + 1
    assert resp.headers["etag"] == f'"{version + 1}"'
    entry = admin(a, "GET", "/audit", params={"experiment": "share"}).json()["entries"][0]
    assert entry["action"] == "set-share"
    assert (entry["reason"], entry["actor"]) == ("by hand", "admin")  # ABGATE_ADMIN_TOKEN's name
    assert (entry["before"]["treatment_percent"], entry["after"]["treatment_percent"]) == (5, 30)

    # If-Match as for PATCH: a stale version changes nothing, on any gateway instance
    stale = admin(b, "POST", "/experiments/share/share", json={"treatment_percent": 40},
                  headers={"If-Match": f'"{version}"'})  # fmt: skip
    assert stale.status_code == 412, stale.text
    # the same validation as a PATCH of treatment_percent
    for value in (150, -1, "50", True, None):
        body = {"treatment_percent": value}
        refused = admin(b, "POST", "/experiments/share/share", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert "treatment_percent" in refused.json()["error"]["message"], refused.text
        patched = admin(b, "PATCH", "/experiments/share", json=body)
        assert patched.status_code == 422, (body, patched.text)
    for body in ({}, {"reason": "no share"}, {"treatment_percent": 10, "route": "elsewhere"},
                 {"treatment_percent": 10, "reason": 3}):  # fmt: skip
        refused = admin(b, "POST", "/experiments/share/share", json=body)
        assert refused.status_code == 422, (body, refused.text)
    assert admin(b, "POST", "/experiments/nope/share",
                 json={"treatment_percent": 10}).status_code == 404  # fmt: skip
    assert admin(b, "GET", "/experiments/share").json()["treatment_percent"] == 30

    # without If-Match and reason, from another gateway instance; a claimed actor is ignored:
    # the actor is the token's name
    ok = admin(b, "POST", "/experiments/share/share", json={"treatment_percent": 12.5},
               headers={"X-Abgate-Actor": "oncall"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["treatment_percent"] == 12.5
    entry = admin(a, "GET", "/audit", params={"experiment": "share"}).json()["entries"][0]
    assert (entry["action"], entry["reason"], entry["actor"]) == ("set-share", "", "admin")

    # a final experiment keeps its share, as with PATCH
    assert admin(a, "POST", "/experiments/share/rollback").is_success
    final = admin(a, "POST", "/experiments/share/share", json={"treatment_percent": 50})
    assert final.status_code == 409 and "rolled_back" in final.json()["error"]["message"]


def test_report_after_a_manual_ramp_agrees_with_the_controller(
    replicas: list[Proc], emu: Proc
) -> None:
    """Issue 16, point 8: set-share 20 -> 25 -> 30, advance to 50, correct traffic in every
    step. The report's SRM is the controller's (units of the current step), not all units so
    far against 50 %; its share chart and `abgate report` list every change."""
    import sys

    from tests.procs import ROOT, base_env

    a, b, _ = replicas
    body = new_exp(emu, "manual-ramp", "manual-ramp-route", 20, policy={"auto": False})
    assert admin(a, "POST", "/experiments", json=body).is_success
    users = 0
    for i, step in enumerate((None, 25, 30, "advance")):
        if step == "advance":
            assert admin(b, "POST", "/experiments/manual-ramp/advance").is_success
        elif step is not None:
            share = admin(b, "POST", "/experiments/manual-ramp/share",
                          json={"treatment_percent": step})  # fmt: skip
            assert share.is_success, share.text
        gw = replicas[i % 3]
        want = {None: 20, 25: 25, 30: 30, "advance": 50}[step]
        wait_until(
            lambda gw=gw, want=want: admin(gw, "GET", "/experiments/manual-ramp").json()[
                "treatment_percent"] == want
        )  # fmt: skip
        for _ in range(60):  # new users only: each assigned under this step's share
            arm(gw, "manual-ramp-route", f"ramp-user-{users}")
            users += 1

    def report() -> dict[str, Any]:
        return admin(a, "GET", "/experiments/manual-ramp/report").json()  # type: ignore[no-any-return]

    wait_until(lambda: sum(report()["units"].values()) == users, timeout=10)
    rep = report()
    # about 31 % of all units in treatment: all units against the current 50 % (the old
    # report's test) gives p < 1e-6; the units of the current step are split as configured
    assert rep["units"]["treatment"] < 0.4 * users, rep["units"]
    assert not rep["srm"]["mismatch"], rep["srm"]
    assert [(c["share"], c["action"]) for c in rep["shares"]] == [
        (20, "create"), (25, "set-share"), (30, "set-share"), (50, "advance"),
    ]  # fmt: skip
    guards = {m["metric"]: m for m in rep["metrics"] if m["role"] == "guardrail"}
    for name in ("error_rate", "latency_p95_ms"):
        assert guards[name]["control"] is not None and guards[name]["treatment"] is not None
    out = subprocess.run(
        [sys.executable, "-m", "router", "report", "manual-ramp", "--url", a.url,
         "--token", TOKEN],
        env=base_env(COLUMNS="200"),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "MISMATCH" not in out.stdout and "SRM:" in out.stdout, out.stdout
    assert "50% advance" in out.stdout and out.stdout.count("set-share") == 2, out.stdout


def test_validation_errors_name_the_field(replicas: list[Proc], emu: Proc) -> None:
    gw = replicas[0]
    cases = [
        ({**new_exp(emu, "v1", "v-route", 150)}, 422, "treatment_percent"),
        (
            {
                **new_exp(emu, "v2", "v-route", 5),
                "control": {"base_url": "vllm:8000", "model": "m"},
            },
            422,
            "base_url",
        ),
        ({**new_exp(emu, "v3", "v-route", 5), "overrides": {"u1": "canary"}}, 422, "overrides"),
        ({**new_exp(emu, "v4", "v-route", 5), "state": "promoted"}, 422, "state"),
        ({**new_exp(emu, "seeded", "other-route", 5)}, 409, "already exists"),
        ({**new_exp(emu, "v5", "seeded-route", 5)}, 409, "seeded-route"),
    ]
    for body, status, needle in cases:
        resp = admin(gw, "POST", "/experiments", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert needle in resp.json()["error"]["message"]
    names = {
        s["experiment"]["name"] for s in admin(gw, "GET", "/experiments").json()["experiments"]
    }
    assert not names & {"v1", "v2", "v3", "v4", "v5"}


def test_lifecycle_transitions_and_audit(replicas: list[Proc], emu: Proc) -> None:
    gw = replicas[1]
    created = admin(gw, "POST", "/experiments", json=new_exp(emu, "life", "life-route", 5,
                                                             state="draft"))  # fmt: skip
    assert created.status_code == 201 and created.json()["state"] == "draft"
    assert created.headers["etag"] == '"1"'
    assert {arm(gw, "life-route", f"u{i}") for i in range(20)} == {"control"}  # draft: control

    def act(action: str, status: int = 200, **kw: Any) -> dict[str, Any]:
        resp = admin(gw, "POST", f"/experiments/life/{action}", **kw)
        assert resp.status_code == status, (action, resp.text)
        return resp.json()  # type: ignore[no-any-return]

    assert "needs it running" in act("pause", 409)["error"]["message"]
    assert act("start")["state"] == "running"
    act("start", 409)
    act("resume", 409)
    assert act("advance")["treatment_percent"] == 10
    assert act("pause", json={"reason": "holiday"})["state"] == "paused"
    act("advance", 409)
    assert act("resume")["state"] == "running"
    for step in (25, 50, 100):
        assert act("advance")["treatment_percent"] == step
    assert "last ramp step" in act("advance", 409)["error"]["message"]
    promoted = act("promote", json={"reason": "wins"})
    assert promoted["state"] == "promoted" and promoted["treatment_percent"] == 100
    assert {arm(gw, "life-route", f"u{i}") for i in range(10)} == {"treatment"}
    assert admin(gw, "PATCH", "/experiments/life", json={"treatment_percent": 5}).status_code == 409
    rolled = act("rollback", json={"reason": "complaints"})
    assert rolled["state"] == "rolled_back" and rolled["treatment_percent"] == 0
    act("rollback", 409)
    act("resume", 409)

    entries = admin(gw, "GET", "/audit", params={"experiment": "life"}).json()["entries"]
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["create", "start", "advance", "pause", "resume", "advance", "advance",
                       "advance", "promote", "rollback"]  # fmt: skip
    last = entries[0]
    assert last["reason"] == "complaints" and last["actor"] == "admin"
    assert last["before"]["state"] == "promoted" and last["after"]["state"] == "rolled_back"
    assert [e["version"] for e in entries] == sorted((e["version"] for e in entries), reverse=True)
    assert entries[-1]["before"] is None

    deleted = admin(gw, "DELETE", "/experiments/life")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": "life"}
    assert admin(gw, "GET", "/experiments/life").status_code == 404
    assert (
        admin(gw, "GET", "/audit", params={"experiment": "life"}).json()["entries"][0]["action"]
        == "delete"
    )


def test_stale_if_match_is_refused(replicas: list[Proc], emu: Proc) -> None:
    gw = replicas[0]
    admin(gw, "POST", "/experiments", json=new_exp(emu, "etag", "etag-route", 5))
    current = admin(gw, "GET", "/experiments/etag")
    version = current.json()["version"]
    assert current.headers["etag"] == f'"{version}"'
    ok = admin(gw, "PATCH", "/experiments/etag", json={"treatment_percent": 7},
               headers={"If-Match": f'"{version}"'})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["version"] == version + 1
    stale = admin(gw, "PATCH", "/experiments/etag", json={"treatment_percent": 9},
                  headers={"If-Match": f'"{version}"'})  # fmt: skip
    assert stale.status_code == 412
    assert admin(gw, "GET", "/experiments/etag").json()["treatment_percent"] == 7
    assert admin(gw, "DELETE", "/experiments/etag").status_code == 409  # running
    admin(gw, "POST", "/experiments/etag/rollback")


def test_changes_reach_every_replica(
    replicas: list[Proc], emu: Proc, stack_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    a, b, c = replicas
    users = [f"prop-{i}" for i in range(60)]
    assert admin(a, "POST", "/experiments", json=new_exp(emu, "prop", "prop-route", 10)).is_success
    wait_until(
        lambda: all(arm(r, "prop-route", "probe") in ("control", "treatment") for r in (b, c))
    )
    at10 = {u: arm(a, "prop-route", u) for u in users}
    for r in (b, c):
        assert {u: arm(r, "prop-route", u) for u in users} == at10

    assert admin(b, "PATCH", "/experiments/prop", json={"treatment_percent": 60}).is_success
    at60 = {u: arm(c, "prop-route", u) for u in users}
    assert sum(v == "treatment" for v in at60.values()) > sum(
        v == "treatment" for v in at10.values()
    )
    assert all(at60[u] == "treatment" for u in users if at10[u] == "treatment")
    for r in (a, b):
        assert {u: arm(r, "prop-route", u) for u in users} == at60

    # a replica started after the change picks it up
    with gateway(tmp_path, {}, stack_redis.url, admin_token=TOKEN) as late:
        assert {u: arm(late, "prop-route", u) for u in users} == at60

    # pub/sub connections cut: the change still arrives, by polling
    client = redis.Redis.from_url(stack_redis.url)
    client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    client.close()
    assert admin(c, "POST", "/experiments/prop/rollback", json={"reason": "test"}).is_success
    for r in (a, b):
        wait_until(lambda r=r: arm(r, "prop-route", users[0]) == "control", timeout=3)
        assert {arm(r, "prop-route", u) for u in users} == {"control"}


def test_rollback_under_streaming_load(replicas: list[Proc], emu: Proc) -> None:
    a, b, c = replicas
    body = {
        "name": "live", "route": "live-route", "treatment_percent": 50,
        "control": {"base_url": emu.url + "/v1", "model": "slow"},
        "treatment": {"base_url": emu.url + "/v1", "model": "slow"},
    }  # fmt: skip
    assert admin(a, "POST", "/experiments", json=body).is_success
    wait_until(lambda: all(_stream_arm(r, "probe", max_tokens=1)[0] for r in (b, c)))
    treated = [u for u in (f"s{i}" for i in range(40)) if arm(a, "live-route", u) == "treatment"]
    assert len(treated) >= 5

    streams: list[tuple[str, bool]] = []
    records: list[tuple[float, int, str]] = []  # (sent at, replica, arm)
    errors: list[str] = []
    stop = threading.Event()

    started = [threading.Event() for _ in treated]

    def streamer(r: Proc, user: str, began: threading.Event) -> None:
        try:
            streams.append(_stream_arm(r, user, max_tokens=25, started=began))
        except Exception as exc:
            errors.append(repr(exc))

    def poller(i: int, r: Proc) -> None:
        k = 0
        while not stop.is_set():
            user = treated[k % len(treated)]
            k += 1
            sent = time.monotonic()
            try:
                records.append((sent, i, arm(r, "live-route", user)))
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=streamer, args=(replicas[i % 3], u, started[i]))
               for i, u in enumerate(treated)]  # fmt: skip
    threads += [threading.Thread(target=poller, args=(i, r)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for began in started:  # every stream is under way (25 tokens at 25 tokens/s)
        assert began.wait(30) or errors, "a stream did not start"
    resp = admin(b, "POST", "/experiments/live/rollback", json={"reason": "load test"})
    returned = time.monotonic()
    assert resp.status_code == 200
    time.sleep(0.8)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    # every stream started on treatment finished, on treatment, with [DONE]
    assert len(streams) == len(treated)
    assert all(a == "treatment" and done for a, done in streams)
    # after the rollback is visible on a replica, it assigns nobody to treatment
    for i in range(3):
        mine = sorted((t, a) for t, r, a in records if r == i)
        first_control = next(t for t, a in mine if a == "control")
        assert all(a == "control" for t, a in mine if t >= first_control)
        assert first_control - returned < 0.5
    assert all(a == "control" for t, _, a in records if t > returned + 0.1)


def _stream_arm(
    r: Proc, user: str, max_tokens: int, started: threading.Event | None = None
) -> tuple[str, bool]:
    """The arm a stream was served by, and whether it ended with [DONE] and no error event;
    `started` is set once its response head arrived."""
    body = {"model": "live-route", "messages": MSG, "stream": True, "max_tokens": max_tokens}
    with httpx.stream("POST", r.url + "/v1/chat/completions", json=body,
                      headers={"X-User-Id": user}, timeout=30) as resp:  # fmt: skip
        assert resp.status_code == 200
        if started is not None:
            started.set()
        lines = [line for line in resp.iter_lines() if line]
        return resp.headers["x-abgate-arm"], lines[-1] == "data: [DONE]" and not any(
            '"error"' in line for line in lines
        )


def test_admin_api_is_off_without_a_token(
    tmp_path: Path, stack_redis: EmbeddedRedis, emu: Proc
) -> None:
    with gateway(tmp_path, {}, stack_redis.url) as gw:
        resp = httpx.get(gw.url + "/admin/experiments")
        assert resp.status_code == 503
        assert "ABGATE_ADMIN_TOKEN" in resp.json()["error"]["message"]
        assert "admin API disabled" in gw.log.read_text()
    with gateway(tmp_path, {}, stack_redis.url, insecure_admin="true") as gw:
        assert httpx.get(gw.url + "/admin/experiments").status_code == 200
        assert "WITHOUT authentication" in gw.log.read_text()


def test_schemathesis_finds_no_server_error_or_schema_violation(
    replicas: list[Proc], tmp_path: Path
) -> None:
    """Property-based requests against the gateway's own OpenAPI document (admin routes).

    `positive_data_acceptance` is left out: a schema-valid request may still be refused for
    what it means (a stale If-Match is 412, an unknown name 404), which the schema cannot say.
    """
    gw = replicas[2]
    out = subprocess.run(
        [
            str(Path(__import__("sys").executable).parent / "st"),
            "run",
            gw.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--include-path-regex",
            "^/admin",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "-n",
            "25",
            "--seed",
            "11",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    assert "passed" in out.stdout
