"""deploy/Dockerfile built and run by Docker's engine, as a user of the image would.

The test starts its own `dockerd` (Debian's docker.io) in the background and stops it at the
end. Its data (images and layers) live in the test cache folder so that a warm run reuses them;
it runs without a bridge network or iptables rules: every build and container uses the host's
network, and everything listens on 127.0.0.1. No image registry is reachable from the test
machines, so the base image (`PYTHON_IMAGE`) is made from Debian's packages: debootstrap, then
`docker import`. That image is kept, tagged by what went into it; on top of it, on every run,
the host's CA certificates are added so that pip inside the build trusts what the host trusts
(some networks intercept TLS); a user's build on the official Python image needs none of it.
The gateway and the controller then run from the image against a redis-server and the vLLM
emulator on the host. docs/install.md gives the cost of a cold and a warm run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from router.runtime.embedded_redis import EmbeddedRedis, free_port, stop_process
from tests.deploy.artifacts import DEPLOY, ROOT, require_tool
from tests.install.shipped import cache_dir, locked
from tests.procs import Proc, emulator, experiment, write_config

pytestmark = pytest.mark.integration

TOKEN = "image-token"
#: the base image: Debian with Debian's own Python (in /usr/bin; the official image's is in
#: /usr/local/bin)
SUITE, PACKAGES = "bookworm", ("python3", "python3-venv", "python3-pip", "python-is-python3",
                               "ca-certificates")  # fmt: skip
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
OS_IMAGE = "abgate-test-os"
BASE_IMAGE, IMAGE = "abgate-test-base:latest", "abgate-test:latest"
CA_LAYER = f"""FROM {{os_image}}
COPY host-ca.crt /usr/local/share/ca-certificates/abgate-test-host-ca.crt
RUN update-ca-certificates
ENV PIP_CERT={HOST_CA} SSL_CERT_FILE={HOST_CA} REQUESTS_CA_BUNDLE={HOST_CA}
"""


def _tool(name: str) -> str:
    path = require_tool(name, "docker.io debootstrap")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError("Docker's engine needs root (CI runs as root)")
        pytest.skip("Docker's engine needs root")
    return path


def _unmount_under(*roots: Path) -> None:
    """What the engine (or debootstrap) leaves mounted below these folders, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            points.append(point)
    for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


class Engine:
    """A dockerd of the test's own, on a socket of its own."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.run_dir = Path(tempfile.mkdtemp(prefix="abgate-docker-"))  # short socket paths
        self.socket = self.run_dir / "docker.sock"
        self.log = data.parent / "dockerd.log"
        self.pidfile = data.parent / "dockerd.pid"  # what a killed test run may leave behind
        self.docker = shutil.which("docker", path="/usr/bin") or _tool("docker")
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0",
                "DOCKER_CONFIG": str(self.run_dir / "client")}  # fmt: skip

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        out = subprocess.run([self.docker, *args], env=self.env(), capture_output=True,
                             timeout=timeout)  # fmt: skip
        text = out.stdout.decode(errors="replace")
        assert not check or out.returncode == 0, (args, text[-3000:], out.stderr.decode()[-3000:])
        return text if out.returncode == 0 else ""

    def _stop_leftover(self) -> None:
        """The engine of a test run that was killed before it could stop it: its dockerd (still
        using the data folder), its mounts and its state folder."""
        try:
            pid, run_dir = self.pidfile.read_text().split("\n", 1)
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        except (OSError, ValueError):
            cmdline = b""
        if b"dockerd" in cmdline and str(self.data).encode() in cmdline:
            os.kill(int(pid), 15)
            for _ in range(600):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        _unmount_under(Path(run_dir), self.data)
        if Path(run_dir).name.startswith("abgate-docker-"):
            shutil.rmtree(run_dir, ignore_errors=True)

    def start(self) -> None:
        self._stop_leftover()
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [
            _tool("dockerd"), f"--data-root={self.data}", f"--exec-root={self.run_dir}",
            f"--host=unix://{self.socket}", f"--pidfile={self.run_dir / 'docker.pid'}",
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self.pidfile.write_text(f"{self.proc.pid}\n{self.run_dir}")
        deadline = time.monotonic() + 60
        while self("version", check=False, timeout=10) == "":
            assert self.proc.poll() is None and time.monotonic() < deadline, self.tail()
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=60)
            self.proc = None
        _unmount_under(self.run_dir, self.data)
        self.pidfile.unlink(missing_ok=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def has(self, image: str) -> bool:
        return self("image", "inspect", image, check=False) != ""


def _os_image(engine: Engine, tmp: Path) -> str:
    """Debian with Python, from debootstrap, kept under a tag naming what went into it."""
    key = hashlib.sha256(f"{SUITE} minbase {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    tag = f"{OS_IMAGE}:{key}"
    if engine.has(tag):
        return tag
    rootfs = tmp / "rootfs"
    try:
        out = subprocess.run(
            [_tool("debootstrap"), "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(rootfs)], capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        pack = ["tar", "-C", str(rootfs), "-c", "."]
        with subprocess.Popen(pack, stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [engine.docker, "import", "-", tag], stdin=tar.stdout, env=engine.env(),
                capture_output=True, timeout=300,
            )  # fmt: skip
        assert tar.returncode == 0 and imported.returncode == 0, imported.stderr
    finally:
        _unmount_under(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)
    for old in engine("images", OS_IMAGE, "--format", "{{.Repository}}:{{.Tag}}").split():
        if old != tag:
            engine("rmi", old, check=False)
    return tag


def _base_image(engine: Engine, tmp: Path) -> str:
    """The Debian image plus the host's CA certificates (rebuilt when they change)."""
    context = tmp / "base"
    context.mkdir()
    shutil.copy(HOST_CA, context / "host-ca.crt")
    (context / "Dockerfile").write_text(CA_LAYER.format(os_image=_os_image(engine, tmp)))
    engine("build", "--quiet", "--network=host", "--tag", BASE_IMAGE, str(context), timeout=300)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    for tool in ("docker", "dockerd", "debootstrap"):
        _tool(tool)
    assert HOST_CA.exists(), HOST_CA
    root = cache_dir() / "docker"
    root.mkdir(exist_ok=True)
    with locked(root.parent / "docker.lock"):
        eng = Engine(root / "data")
        try:
            try:
                eng.start()
            except AssertionError:  # kept data the engine cannot use: start from nothing
                eng.stop()
                shutil.rmtree(eng.data, ignore_errors=True)
                eng.start()
            yield eng
        finally:
            eng.stop()


@pytest.fixture(scope="module")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """deploy/Dockerfile, built from the repository root as its header says."""
    base = _base_image(engine, tmp_path_factory.mktemp("image"))
    build = ["build", "--quiet", "--network=host", "-f", str(DEPLOY / "Dockerfile"),
             "--build-arg", f"PYTHON_IMAGE={base}"]  # fmt: skip
    # the build stage keeps a tag, so that its dependency layer stays cached between runs
    engine(*build, "--target", "build", "--tag", "abgate-test:build", str(ROOT), timeout=900)
    engine(*build, "--tag", IMAGE, str(ROOT), timeout=900)
    engine("image", "prune", "--force")  # what earlier runs built and no tag holds any more
    return IMAGE


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    with emulator(tmp_path_factory.mktemp("emu"), "--base-model", "base",
                  "--served-model-name", "base", "lora-a") as proc:  # fmt: skip
        yield proc


def _run_container(engine: Engine, name: str, *args: str) -> str:
    engine("rm", "--force", name, check=False)
    engine("run", "--detach", "--name", name, "--network=host", *args)
    return name


def _wait(what: str, probe: Any, engine: Engine, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        running = engine("inspect", "--format", "{{.State.Running}}", name, check=False)
        if time.monotonic() > deadline or running.strip() != "true":
            logs = subprocess.run([engine.docker, "logs", name], env=engine.env(),
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
            raise AssertionError(f"{name}: {what}\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def gateway(
    engine: Engine, image: str, upstream: Proc, redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:  # fmt: skip
    """The image's default command (`abgate serve`) with a configuration file mounted."""
    redis.Redis.from_url(redis_server.url).flushall()
    config = write_config(tmp_path_factory.mktemp("gw") / "abgate.yaml", {
        "experiments": [experiment("image-exp", "image-route", upstream.url, 50)],
    })  # fmt: skip
    config.chmod(0o644)  # read by the image's user
    port = free_port()
    name = _run_container(
        engine, "abgate-test-gateway", "--env", f"ABGATE_REDIS_URL={redis_server.url}",
        "--env", "ABGATE_HOST=127.0.0.1", "--env", f"ABGATE_PORT={port}",
        "--env", f"ABGATE_ADMIN_TOKEN={TOKEN}", "--env", "ABGATE_CONFIG_FILE=/etc/abgate.yaml",
        "--volume", f"{config}:/etc/abgate.yaml:ro", image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("not ready", lambda: _answers(url + "/readyz"), engine, name)
        yield url
    finally:
        engine("rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def controller(
    engine: Engine, image: str, redis_server: EmbeddedRedis
) -> Iterator[tuple[str, str]]:
    """`abgate controller` with the health check deploy/compose.yaml gives it."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["controller"]
    port = str(free_port())
    check = compose["healthcheck"]
    assert check["test"][0] == "CMD"
    composed = compose["command"][compose["command"].index("--metrics-port") + 1]
    health = shlex.join(check["test"][1:]).replace(f":{composed}/", f":{port}/")
    name = _run_container(
        engine, "abgate-test-controller", "--env", f"ABGATE_REDIS_URL={redis_server.url}",
        "--health-cmd", health, "--health-interval", check["interval"],
        "--health-timeout", check["timeout"], "--health-retries", str(check["retries"]),
        "--health-start-period", check["start_period"],
        image, "controller", "--metrics-port", port, "--tick", "0.5",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        _wait("no /metrics", lambda: _answers(url), engine, name)
        yield name, url
    finally:
        engine("rm", "--force", name, check=False)


def _inspect(engine: Engine, name: str) -> dict[str, Any]:
    return json.loads(engine("inspect", name))[0]  # type: ignore[no-any-return]


def _healthy(engine: Engine, name: str) -> bool:
    status = _inspect(engine, name)["State"]["Health"]["Status"]
    assert status != "unhealthy", _inspect(engine, name)["State"]["Health"]
    return status == "healthy"


def test_the_gateway_container_proxies_requests(
    gateway: str, controller: tuple[str, str], engine: Engine
) -> None:
    """A request through the gateway container, and the image's operator CLI against it.
    (The controller container starts first too, so that both health checks run meanwhile.)"""
    body = {"model": "image-route", "messages": [{"role": "user", "content": "hello"}]}
    resp = httpx.post(gateway + "/v1/chat/completions", json=body,
                      headers={"X-User-Id": "user-1"}, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-abgate-arm"] in {"control", "treatment"}
    assert resp.json()["choices"][0]["message"]["content"]
    # the operator CLI of the image, against its own gateway
    status = engine("exec", "--env", "COLUMNS=200", "abgate-test-gateway", "abgate", "status",
                    "--url", gateway, "--token", TOKEN)  # fmt: skip
    assert "image-exp" in status


def test_the_healthcheck_turns_healthy(gateway: str, engine: Engine) -> None:
    _wait("not healthy", lambda: _healthy(engine, "abgate-test-gateway"), engine,
          "abgate-test-gateway", timeout=90)  # fmt: skip


def test_the_controller_container_starts_and_leads(
    controller: tuple[str, str], engine: Engine
) -> None:
    name, url = controller
    _wait("never leader", lambda: "abgate_controller_leader 1.0" in httpx.get(url).text,
          engine, name)  # fmt: skip
    _wait("not healthy", lambda: _healthy(engine, name), engine, name, timeout=90)


@pytest.mark.parametrize("name", ["abgate-test-gateway", "abgate-test-controller"])
def test_the_processes_run_as_the_image_user(
    name: str, gateway: str, controller: tuple[str, str], engine: Engine
) -> None:
    state = _inspect(engine, name)
    assert state["Config"]["User"] not in ("", "0", "root")
    status = Path(f"/proc/{state['State']['Pid']}/status").read_text()
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid == ["10001"] * 4, status  # real, effective, saved and filesystem uid


def test_the_legacy_builder_sees_the_same_context_as_buildkit() -> None:
    """BuildKit reads deploy/Dockerfile.dockerignore, the legacy builder only a root
    .dockerignore: both must let the same files through."""
    assert (ROOT / ".dockerignore").read_text() == (DEPLOY / "Dockerfile.dockerignore").read_text()


def test_the_dockerfile_names_no_interpreter_path() -> None:
    """Debian's Python is in /usr/bin, the official image's in /usr/local/bin: the Dockerfile
    calls `python3` and `python` through PATH only."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert "/usr/bin/python" not in text and "/usr/local/bin/python" not in text
