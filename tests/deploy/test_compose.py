"""deploy/compose.yaml against the compose specification, and the abgate image's Dockerfile.
The Redis of compose.yaml starts as deploy/k8s/redis.yaml's does (tests/deploy/test_redis_acl.py
runs that one)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import setuptools  # type: ignore[import-untyped]
import yaml

from router.runtime.gateway import load_config_file
from router.settings import Settings
from tests.deploy.artifacts import DEPLOY, ROOT, dockerfile, healthcheck_command
from tests.deploy.shipped_redis import acl_user, option, shipped

SETTINGS = {f"ABGATE_{name.upper()}" for name in Settings.model_fields}
SERVICES = {"vllm", "gateway-1", "gateway-2", "controller", "redis", "prometheus", "grafana"}
_INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")  # `$$`: a literal `$`


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """The value compose uses with the variables `env` (`${X:-default}` when X is unset)."""
    given = env or {}

    def one(m: re.Match[str]) -> str:
        if m.group(1) in given:
            return given[m.group(1)]
        assert m.group(2) != ":?", f"{m.group(1)} is required"
        return m.group(3) or ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.exists():
        if os.environ.get("CI") == "true":
            raise AssertionError("check-jsonschema is required (dev extra)")
        pytest.skip("check-jsonschema is not installed (dev extra)")
    out = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_services_and_their_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    vllm = services["vllm"]
    image = _interpolate(vllm["image"])
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", image), image
    assert "--enable-lora" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert any(_interpolate(v).endswith(":/adapters:ro") for v in vllm["volumes"])
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["command"] == ["serve"] and gw["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).exists()
        assert gw["environment"]["ABGATE_HOST"] == "0.0.0.0"
        assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    ctl = services["controller"]
    assert ctl["command"][0] == "controller"
    metrics_port = ctl["command"][ctl["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{metrics_port}/metrics" in " ".join(ctl["healthcheck"]["test"])
    redis = services["redis"]
    assert option(redis["command"], "appendonly") == "yes" and redis["volumes"]
    for name, svc in services.items():
        if "build" not in svc:
            image = _interpolate(svc["image"])
            assert ":" in image and not image.endswith(":latest"), (name, image)
        env = svc.get("environment", {})
        unknown = {k for k in env if k.startswith("ABGATE_")} - SETTINGS
        assert unknown == set(), (name, unknown)
        for volume in svc.get("volumes", []):
            source = _interpolate(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, volume)
    # Prometheus scrapes every service that exports metrics, on the right ports
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in prom["scrape_configs"]
    }
    admin = {services[g]["environment"]["ABGATE_ADMIN_PORT"] for g in ("gateway-1", "gateway-2")}
    assert targets["abgate-gateway"] == {f"gateway-1:{p}" for p in admin} | {
        f"gateway-2:{p}" for p in admin
    }  # /metrics is served on the admin port only
    assert targets["abgate-controller"] == {f"controller:{metrics_port}"}
    assert targets["vllm"] == {"vllm:8000"} and "--port=8000" in vllm["command"]
    assert load_config_file(DEPLOY / "abgate.yaml").default_upstream is not None


def test_every_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    used = {m.group(1) for m in _INTERPOLATION.finditer(text)}
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == example
    required = {m.group(1) for m in _INTERPOLATION.finditer(text) if m.group(2) == ":?"}
    # no default secrets
    assert required == {"ABGATE_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD"}


def _ports(svc: dict[str, Any]) -> dict[int, str]:
    """Container port -> the host address it is published on ("" for every interface)."""
    out = {}
    for spec in svc.get("ports", []):
        *host, container = _interpolate(spec).split(":")
        address = host[0] if len(host) == 2 else ""
        out[int(container)] = address
    return out


def test_the_admin_api_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("gateway-1", "gateway-2"):
        env = services[name]["environment"]
        data, admin = int(env["ABGATE_PORT"]), int(env["ABGATE_ADMIN_PORT"])
        assert data != admin
        assert _ports(services[name]) == {data: "", admin: "127.0.0.1"}, name
    assert "ports" not in services["redis"] and "ports" not in services["controller"]


def test_redis_starts_as_on_kubernetes_with_a_password_and_noeviction(
    compose: dict[str, Any],
) -> None:
    k8s = shipped()
    redis = compose["services"]["redis"]
    shell, flags, script, name = redis["entrypoint"]
    assert [shell, flags, name] == ["sh", "-ec", "redis"]
    assert _interpolate(script) == k8s.script  # `$$` is compose's literal `$`
    env = redis["environment"]
    assert env["REDIS_ACL_RULES"] == k8s.env["REDIS_ACL_RULES"]
    assert str(Path(env["REDIS_ACL_FILE"]).parent) in redis["tmpfs"]
    secret = "s3cr3t0123"
    for var in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert _interpolate(env[var], {"REDIS_PASSWORD": secret}) == secret
    command = [_interpolate(x) for x in redis["command"]]
    assert command[0] == "redis-server" and option(command, "dir") == "/data"
    assert option(command, "maxmemory-policy") == "noeviction"
    assert re.fullmatch(r"\d+[mg]b", option(command, "maxmemory"))
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", k8s.probe]
    pod = k8s.pod_security  # the image's redis user, who owns /data
    assert redis["user"] == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    for name in ("gateway-1", "gateway-2", "controller"):
        url = urlsplit(
            _interpolate(compose["services"][name]["environment"]["ABGATE_REDIS_URL"],
                         {"REDIS_PASSWORD": secret})
        )  # fmt: skip
        assert (url.username, url.password) == (acl_user(k8s.script), secret), name
        assert (url.hostname, url.port) == ("redis", 6379), name


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    lines = dockerfile()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    stages = [x for x in lines if x.startswith("FROM ")]
    assert stages == ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}"]
    final = lines[lines.index(stages[-1]) :]
    (user,) = [x for x in final if x.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["abgate"]' in final and 'CMD ["serve"]' in final
    assert healthcheck_command()[0] == "python"


def test_build_context_holds_the_package() -> None:
    """deploy/Dockerfile.dockerignore lets through every package `pip install .` ships (as
    pyproject.toml finds them), the readme it names, and what the Dockerfile copies."""
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        src
        for x in dockerfile()
        if x.startswith("COPY ") and "--from" not in x
        for src in x.split()[1:-1]
    }
    assert copied <= allowed
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(where=str(ROOT), include=include)
    assert packages and {p.split(".")[0] for p in packages} <= allowed & copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= allowed & copied
    scripts = pyproject["project"]["scripts"]
    assert scripts["abgate"] == "router.cli.main:main"  # the image's ENTRYPOINT
