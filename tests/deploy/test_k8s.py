"""The Kubernetes manifests: rendered like `kubectl kustomize` (by a small renderer here, and by
kubectl itself where it is installed), validated offline against the Kubernetes OpenAPI schemas
(kubernetes-validate), and checked for what the schemas cannot see: selectors that select,
references that resolve, settings that exist, secrets that stay in Secrets, ports and
NetworkPolicies that let through only whom they should (tests/deploy/test_redis_acl.py runs the
shipped Redis itself)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from router.runtime.gateway import load_config_file
from router.settings import Settings
from tests.deploy.artifacts import DEPLOY
from tests.deploy.shipped_redis import acl_user, option

K8S = DEPLOY / "k8s"
CLUSTER_SCOPED = {"Namespace"}
SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "components",
             "secretGenerator", "generatorOptions", "images"}  # fmt: skip
# The oldest Kubernetes we claim (autoscaling/v2, policy/v1 are GA since 1.23/1.21) and the
# newest schemas kubernetes-validate ships.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SETTINGS = {f"ABGATE_{name.upper()}" for name in Settings.model_fields}
WORKLOADS = {"Deployment", "StatefulSet"}


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def render(root: Path, components: bool = False) -> list[dict[str, Any]]:
    """What `kubectl kustomize root` prints, for the features this kustomization uses."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(k) <= SUPPORTED, f"the renderer does not know {set(k) - SUPPORTED}"
    docs = [d for res in k["resources"] for d in _load(root / res)]
    for comp in k.get("components", []) + (["monitoring"] if components else []):
        ck = yaml.safe_load((root / comp / "kustomization.yaml").read_text())
        assert ck["kind"] == "Component" and set(ck) <= {"apiVersion", "kind", "resources"}
        docs += [d for res in ck["resources"] for d in _load(root / comp / res)]
    assert k["generatorOptions"] == {"disableNameSuffixHash": True}
    for gen in k.get("secretGenerator", []):
        data: dict[str, str] = {}
        for env in gen["envs"]:
            data.update(_env_file(root / env))
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": gen["name"]},
                     "data": {key: base64.b64encode(v.encode()).decode()
                              for key, v in data.items()}})  # fmt: skip
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            assert label.get("includeSelectors") is False and not label.get("includeTemplates")
            meta.setdefault("labels", {}).update(label["pairs"])
        for container in _containers(doc):
            for image in k.get("images", []):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in WORKLOADS:
        return []
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


REDIS_PASSWORD = "3f1c0ffee5eed"
REDIS_ENV = (
    f"REDIS_PASSWORD={REDIS_PASSWORD}\n"
    f"ABGATE_REDIS_URL=redis://abgate:{REDIS_PASSWORD}@redis:6379/0\n"
)


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s with the admin token and Redis files the operator creates
    (docs/operations.md)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    for secret in ("admin-token.env", "redis.env"):
        assert not (root / secret).exists(), f"a real {secret} must not be committed"
    example = _env_file(root / "admin-token.env.example")
    assert set(example) == {"ABGATE_ADMIN_TOKEN"}
    (root / "admin-token.env").write_text("ABGATE_ADMIN_TOKEN=0123456789abcdef\n")
    assert set(_env_file(root / "redis.env.example")) == {"REDIS_PASSWORD", "ABGATE_REDIS_URL"}
    (root / "redis.env").write_text(REDIS_ENV)
    return root


@pytest.fixture(scope="module", params=[False, True], ids=["base", "with-monitoring"])
def rendered(
    request: pytest.FixtureRequest, k8s_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    docs = render(k8s_copy, components=request.param)
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # an extra where installed: kubectl's kustomize must agree
        theirs = kubectl_kustomize(kubectl, k8s_copy, tmp_path_factory, request.param)
        assert _keyed(theirs) == _keyed(docs)
    return docs


def kubectl_kustomize(
    kubectl: str, k8s: Path, tmp_path_factory: pytest.TempPathFactory, components: bool
) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("kubectl") / "k8s"
    shutil.copytree(k8s, root)
    if components:
        k = yaml.safe_load((root / "kustomization.yaml").read_text())
        k["components"] = ["monitoring"]
        (root / "kustomization.yaml").write_text(yaml.safe_dump(k))
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    keyed = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(keyed) == len(docs)
    return keyed


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in rendered}
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "StatefulSet",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget"}  # fmt: skip
    for doc in rendered:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships; checked in test_servicemonitors_select_services
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "abgate"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "abgate"


def test_references_resolve_and_selectors_select(rendered: list[dict[str, Any]]) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    pods: dict[str, tuple[dict[str, str], set[str]]] = {}
    for doc in rendered:
        if doc["kind"] not in WORKLOADS:
            continue
        name, spec = doc["metadata"]["name"], doc["spec"]
        template_labels = spec["template"]["metadata"]["labels"]
        assert _selects(spec["selector"]["matchLabels"], template_labels), name
        ports = {p["name"] for c in _containers(doc) for p in c.get("ports", [])}
        pods[name] = (template_labels, ports)
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for volume in spec["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, name
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, name
        mounts = {m["name"] for c in _containers(doc) for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in spec["template"]["spec"].get("volumes", [])}
        assert mounts <= volumes | claims, name
        for c in _containers(doc):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names, name
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in names, name
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, (name, probe)
    for svc in _by_kind(rendered, "Service").values():
        selected = [p for p in pods.values() if _selects(svc["spec"]["selector"], p[0])]
        assert len(selected) == 1, svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in selected[0][1], svc["metadata"]["name"]
    for pdb in _by_kind(rendered, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert sum(_selects(sel, p[0]) for p in pods.values()) == 1, pdb["metadata"]["name"]
    for hpa in _by_kind(rendered, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in names


def test_gateway_scales_out_and_is_probed(rendered: list[dict[str, Any]]) -> None:
    gw = _by_kind(rendered, "Deployment")["abgate-gateway"]
    assert gw["spec"]["replicas"] >= 2
    (c,) = _containers(gw)
    assert c["args"] == ["serve"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["image"] == "abgate:0.1.0"
    hpa = _by_kind(rendered, "HorizontalPodAutoscaler")["abgate-gateway"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > 2
    assert "abgate-gateway" in _by_kind(rendered, "PodDisruptionBudget")
    pod = gw["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    ctl = _by_kind(rendered, "Deployment")["abgate-controller"]
    (cc,) = _containers(ctl)
    assert cc["args"][:1] == ["controller"] and "--metrics-port" in cc["args"]
    assert (
        str(cc["ports"][0]["containerPort"]) == cc["args"][cc["args"].index("--metrics-port") + 1]
    )


def test_settings_exist_and_config_file_is_valid(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    cms = _by_kind(rendered, "ConfigMap")
    env = dict(cms["abgate-env"]["data"])
    secret = _by_kind(rendered, "Secret")["abgate-admin"]["data"]
    env.update({k: base64.b64decode(v).decode() for k, v in secret.items()})
    for doc in rendered:
        for c in _containers(doc):
            env.update(
                {e["name"]: _env_value(rendered, e) for e in c.get("env", [])
                 if e["name"].startswith("ABGATE_")}
            )  # fmt: skip
    unknown = {k for k in env if k.startswith("ABGATE_")} - SETTINGS
    assert unknown == set(), "settings that do not exist (router/settings.py)"
    assert env["ABGATE_HOST"] == "0.0.0.0" and env["ABGATE_REDIS_URL"].startswith("redis://")
    (tmp_path / "abgate.yaml").write_text(cms["abgate-config"]["data"]["abgate.yaml"])
    config = load_config_file(tmp_path / "abgate.yaml")
    assert config.default_upstream is not None
    redis = _by_kind(rendered, "StatefulSet")["redis"]
    args = " ".join(_containers(redis)[0]["args"])
    assert "--appendonly yes" in args
    vllm = _by_kind(rendered, "StatefulSet")["vllm"]
    (v,) = _containers(vllm)
    assert "--enable-lora" in v["args"] and ":" in v["image"] and not v["image"].endswith("latest")
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in v["env"]
    assert any(m["mountPath"] == "/adapters" for m in v["volumeMounts"])
    host = config.default_upstream.base_url.split("//")[1].split(":")[0]
    assert host == f"vllm-0.{vllm['spec']['serviceName']}"


def test_servicemonitors_select_services(k8s_copy: Path) -> None:
    docs = render(k8s_copy, components=True)
    services = _by_kind(docs, "Service")
    monitors = _by_kind(docs, "ServiceMonitor")
    assert set(monitors) == {"abgate-gateway", "abgate-controller", "vllm"}
    for name, sm in monitors.items():
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"}
        selected = [
            s
            for s in services.values()
            if _selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(selected) == 1, name
        ports = {p["name"] for p in selected[0]["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics", name


def _secret_value(rendered: list[dict[str, Any]], ref: dict[str, str]) -> str:
    data = _by_kind(rendered, "Secret")[ref["name"]]["data"]
    return base64.b64decode(data[ref["key"]]).decode()


def _env_value(rendered: list[dict[str, Any]], entry: dict[str, Any]) -> str:
    """An `env` entry's value: literal, or from the Secret it names."""
    if "value" in entry:
        return str(entry["value"])
    return _secret_value(rendered, entry["valueFrom"]["secretKeyRef"])


def _container(rendered: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (c,) = _containers(_by_kind(rendered, kind)[name])
    return c


def _pod_env(rendered: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """What a container sees in its environment (envFrom ConfigMaps and Secrets, then env)."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(_by_kind(rendered, "ConfigMap")[src["configMapRef"]["name"]]["data"])
        if "secretRef" in src:
            data = _by_kind(rendered, "Secret")[src["secretRef"]["name"]]["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    env.update({e["name"]: _env_value(rendered, e) for e in c.get("env", [])})
    return env


def _mebibytes(quantity: str) -> float:
    """A Kubernetes quantity (2Gi, 512Mi) or a redis-server size (1200mb, 1gb) in MiB."""
    m = re.fullmatch(r"(\d+)(Gi|Mi|gb|mb)", quantity)
    assert m, quantity
    number, unit = int(m.group(1)), m.group(2)
    return number * (1024 if unit in ("Gi", "gb") else 1)


def test_the_redis_url_comes_from_a_secret_and_logs_in_as_the_acl_user(
    rendered: list[dict[str, Any]],
) -> None:
    for cm in _by_kind(rendered, "ConfigMap").values():
        data = cm.get("data", {})
        assert "ABGATE_REDIS_URL" not in data, cm["metadata"]["name"]
        assert not any("redis://" in str(v) or "rediss://" in str(v) for v in data.values())
    redis_c = _container(rendered, "StatefulSet", "redis")
    redis_env = {e["name"]: e for e in redis_c["env"]}
    for name in ("abgate-gateway", "abgate-controller"):
        c = _container(rendered, "Deployment", name)
        (entry,) = [e for e in c["env"] if e["name"] == "ABGATE_REDIS_URL"]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "abgate-redis", "key": "ABGATE_REDIS_URL"}, name
        url = urlsplit(_pod_env(rendered, c)["ABGATE_REDIS_URL"])
        # the user the Redis start-up script creates, with the password Redis gets
        assert url.username == acl_user(redis_c["command"][2]), name
        assert url.password == _env_value(rendered, redis_env["REDIS_PASSWORD"]) == REDIS_PASSWORD
        service = _by_kind(rendered, "Service")["redis"]
        assert url.hostname == service["metadata"]["name"]
        assert url.port == service["spec"]["ports"][0]["port"] == 6379
    # the password reaches Redis from the same Secret key, never as a literal
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        ref = redis_env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "abgate-redis", "key": "REDIS_PASSWORD"}, name
    probe = redis_c["readinessProbe"]["exec"]["command"]
    values = [str(e.get("value", "")) for e in redis_c["env"]]
    text = " ".join([*redis_c["command"], *redis_c["args"], *probe, *values])
    assert REDIS_PASSWORD not in text


def test_redis_runs_with_an_acl_user_maxmemory_and_noeviction(
    rendered: list[dict[str, Any]],
) -> None:
    sts = _by_kind(rendered, "StatefulSet")["redis"]
    c = _container(rendered, "StatefulSet", "redis")
    script, args = c["command"][2], c["args"]
    assert c["command"][:2] == ["sh", "-ec"] and args[0] == "redis-server"
    assert "user default off" in script and acl_user(script) == "abgate"
    assert script.rstrip().endswith('exec "$@" --aclfile "$REDIS_ACL_FILE"')
    env = {e["name"]: e.get("value") for e in c["env"]}
    rules = env["REDIS_ACL_RULES"]
    assert rules is not None and set(rules.split()) >= {"~abgate:*", "resetchannels",
                                                        "&abgate:*", "-@dangerous"}  # fmt: skip
    assert not set(rules.split()) & {"~*", "allkeys", "&*", "allchannels", "+@dangerous"}
    # the ACL file (it holds the password) lives in a memory-backed volume of its own
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    acl_dir = str(Path(str(env["REDIS_ACL_FILE"])).parent)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[acl_dir]]["emptyDir"]["medium"] == "Memory"
    assert option(args, "appendonly") == "yes" and option(args, "dir") in mounts
    assert option(args, "maxmemory-policy") == "noeviction"
    limit = _mebibytes(c["resources"]["limits"]["memory"])
    maxmemory = _mebibytes(option(args, "maxmemory"))
    assert 0.4 * limit <= maxmemory <= 0.65 * limit, (maxmemory, limit)  # room for the fork
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "--user abgate" in probe[2] and "PONG" in probe[2]


def _container_ports(doc: dict[str, Any]) -> dict[str | int, int]:
    """A workload's container ports by name and by number."""
    ports: dict[str | int, int] = {}
    for c in _containers(doc):
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def test_the_admin_api_has_its_own_port_and_service(rendered: list[dict[str, Any]]) -> None:
    gw = _by_kind(rendered, "Deployment")["abgate-gateway"]
    c = _container(rendered, "Deployment", "abgate-gateway")
    env = _pod_env(rendered, c)
    ports = _container_ports(gw)
    data_port, admin_port = int(env["ABGATE_PORT"]), int(env["ABGATE_ADMIN_PORT"])
    assert data_port != admin_port and ports["http"] == data_port and ports["admin"] == admin_port
    assert set(ports.values()) == {data_port, admin_port}
    for probe in ("readinessProbe", "livenessProbe"):  # health stays on the data plane
        assert ports[c[probe]["httpGet"]["port"]] == data_port
    annotations = gw["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port  # /metrics: admin port only
    services = _by_kind(rendered, "Service")
    targets = {
        name: {ports[p["targetPort"]] for p in svc["spec"]["ports"]}
        for name, svc in services.items()
        if _selects(svc["spec"]["selector"], gw["spec"]["template"]["metadata"]["labels"])
    }
    assert targets == {"abgate-gateway": {data_port}, "abgate-gateway-admin": {admin_port}}
    admin = services["abgate-gateway-admin"]["spec"]
    assert admin.get("type", "ClusterIP") == "ClusterIP"


# Who might knock: every workload's pods in the namespace, and some pods elsewhere.
NAMESPACE = "abgate"
STRANGERS = {
    "app in another namespace": ("shop", {"app": "shop"}),
    "unlabelled pod in the namespace": (NAMESPACE, {}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "admin client": ("ops", {"abgate.io/admin-client": "true"}),
}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is modelled here"
    return _selects(selector.get("matchLabels", {}), labels)


def _peer_admits(peer: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    assert "ipBlock" not in peer, "no policy admits by address"
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != NAMESPACE:
        return False  # a podSelector alone: the policy's own namespace
    return "podSelector" not in peer or _matches(peer["podSelector"], labels)


def _admitted(rendered: list[dict[str, Any]], target: str, port: int) -> set[str]:
    """The sources a connection from which to `target`'s pods on `port` the NetworkPolicies
    let through (policies add up; a pod that none selects accepts everything)."""
    workloads = {d["metadata"]["name"]: d for d in rendered if d["kind"] in WORKLOADS}
    doc = workloads[target]
    labels = doc["spec"]["template"]["metadata"]["labels"]
    ports = _container_ports(doc)
    sources = {name: (NAMESPACE, w["spec"]["template"]["metadata"]["labels"])
               for name, w in workloads.items()} | STRANGERS  # fmt: skip
    policies = [
        p["spec"]
        for p in _by_kind(rendered, "NetworkPolicy").values()
        if _matches(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"]["policyTypes"]
    ]
    if not policies:
        return set(sources)
    admitted = set()
    for rule in (r for p in policies for r in p.get("ingress", [])):
        rule_ports = {ports.get(p["port"]) for p in rule.get("ports", [])}
        if rule.get("ports") and port not in rule_ports:
            continue
        for name, (namespace, source_labels) in sources.items():
            peers = rule.get("from")
            if not peers or any(_peer_admits(p, namespace, source_labels) for p in peers):
                admitted.add(name)
    return admitted


def test_network_policies_let_through_only_whom_they_should(
    rendered: list[dict[str, Any]],
) -> None:
    everyone = _admitted(rendered, "abgate-controller", 9108)  # no policy: every source
    assert len(everyone) == len(STRANGERS) + 4
    # Redis: the gateways and the controller on 6379, nobody on any other port
    assert _admitted(rendered, "redis", 6379) == {"abgate-gateway", "abgate-controller"}
    assert _admitted(rendered, "redis", 16379) == set()
    # vLLM (unauthenticated, loads adapters for whoever asks): the gateways and Prometheus
    assert _admitted(rendered, "vllm", 8000) == {"abgate-gateway", "prometheus"}
    # the gateways: the data plane for everyone, the admin port for Prometheus and admin clients
    assert _admitted(rendered, "abgate-gateway", 8080) == everyone
    assert _admitted(rendered, "abgate-gateway", 8081) == {"prometheus", "admin client"}
    assert _admitted(rendered, "abgate-gateway", 9000) == set()
    for policy in _by_kind(rendered, "NetworkPolicy").values():
        selected = [
            w for w in rendered
            if w["kind"] in WORKLOADS
            and _matches(policy["spec"]["podSelector"], w["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        assert len(selected) == 1, policy["metadata"]["name"]


def test_the_documented_redis_env_command_makes_a_matching_pair(tmp_path: Path) -> None:
    """The command in redis.env.example (and kustomization.yaml) writes one password into both
    lines, and the URL logs in as the ACL user of redis.yaml."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    commands = set()
    for source in (K8S / "redis.env.example", K8S / "kustomization.yaml"):
        (line,) = [x for x in source.read_text().splitlines() if "openssl rand" in x and "p=" in x]
        commands.add(line.lstrip("# ").strip())
    (command,) = commands
    (tmp_path / "deploy" / "k8s").mkdir(parents=True)
    out = subprocess.run(["sh", "-ec", command], cwd=tmp_path, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    env = _env_file(tmp_path / "deploy" / "k8s" / "redis.env")
    url = urlsplit(env["ABGATE_REDIS_URL"])
    assert re.fullmatch(r"[0-9a-f]{64}", env["REDIS_PASSWORD"])
    assert url.password == env["REDIS_PASSWORD"] and url.username == "abgate"
    assert (url.hostname, url.port) == ("redis", 6379)
