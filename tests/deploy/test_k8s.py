"""The Kubernetes manifests: rendered like `kubectl kustomize` (by a small renderer here, and by
kubectl itself where it is installed), validated offline against the Kubernetes OpenAPI schemas
(kubernetes-validate), and checked for what the schemas cannot see: selectors that select,
references that resolve, settings that exist."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from router.runtime.gateway import load_config_file
from router.settings import Settings
from tests.deploy.artifacts import DEPLOY

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


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s with the admin token file the operator creates (docs/operations.md)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    assert not (root / "admin-token.env").exists(), "a real token file must not be committed"
    example = _env_file(root / "admin-token.env.example")
    assert set(example) == {"ABGATE_ADMIN_TOKEN"}
    (root / "admin-token.env").write_text("ABGATE_ADMIN_TOKEN=0123456789abcdef\n")
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
                {e["name"]: "x" for e in c.get("env", []) if e["name"].startswith("ABGATE_")}
            )
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
