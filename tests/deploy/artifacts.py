"""What the deploy tests read from dashboards, alert rules and /metrics pages.

- `dashboards()` and `queries()`: every PromQL expression of the Grafana dashboards (panel
  targets, annotations, template variables), with Grafana's variables substituted the way
  Grafana would for one chosen route/experiment.
- `metric_names()`: the metric names an expression uses (abgate_* and vllm:*).
- `exposed_names()`: the names a /metrics page makes queryable, from its `# TYPE` lines and
  samples (a histogram `h` makes `h_bucket`, `h_count`, `h_sum` queryable).
- `source_of()`: which process must export a metric: the gateway, the controller, or vLLM (in
  the tests, the emulator).
- `dockerfile()` and `healthcheck_command()`: deploy/Dockerfile's instructions.
- `require_tool()`: promtool and prometheus, which skip the tests where they are missing except
  in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Grafana's built-in interval variables, as Grafana would set them for a short time range on a
# Prometheus scraped every second.
BUILTINS = {
    "$__rate_interval": "30s",
    "$__interval": "60s",
    "$__range": "5m",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME = re.compile(r"(?<![\w:])((?:abgate_|vllm:)[A-Za-z0-9_:]*)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel 7 'Requests per arm' A", "annotation 'Controller decisions'", ...
    expr: str
    kind: str  # "panel", "annotation", "variable"


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries() -> list[Query]:
    out: list[Query] = []
    for name, dash in dashboards().items():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
                out.append(Query(name, where, target["expr"], "panel"))
        for ann in dash["annotations"]["list"]:
            if "expr" in ann:
                out.append(Query(name, f"annotation {ann['name']!r}", ann["expr"], "annotation"))
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                out.append(Query(name, f"variable {var['name']}", var["definition"], "variable"))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's variables (`$name`, `${name}`); longest names first."""
    values = {**BUILTINS, **{f"${k}": v for k, v in variables.items()}}
    for key in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + key[1:] + "}", values[key]).replace(key, values[key])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def label_values(definition: str) -> tuple[str | None, str]:
    """`label_values(match, label)` -> (match, label)."""
    m = _LABEL_VALUES.match(definition.strip())
    assert m, f"not a label_values() query: {definition}"
    return m.group("match"), m.group("label")


def metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(_STRING.sub('""', expr)))


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def exposed_names(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                names.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


CONTROLLER_PREFIXES = ("abgate_controller_", "abgate_experiment_srm_")


def source_of(name: str) -> str:
    """The process whose /metrics must carry `name`."""
    if name.startswith("vllm:"):
        return "vllm"
    if name.startswith(CONTROLLER_PREFIXES):
        return "controller"
    assert name.startswith("abgate_"), name
    return "gateway"


def dockerfile() -> list[str]:
    """deploy/Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def healthcheck_command() -> list[str]:
    """The exec form of the image's HEALTHCHECK."""
    (line,) = [x for x in dockerfile() if x.startswith("HEALTHCHECK")]
    return yaml.safe_load(line.split(" CMD ", 1)[1])  # type: ignore[no-any-return]


def require_tool(name: str, package: str = "prometheus") -> str:
    """The path of a command-line tool (also in /usr/sbin, where Debian puts daemons); skips
    without it, except in CI, where .ci/run installs Debian's `package`."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{name} is required in CI (.ci/run installs Debian's {package})")
        pytest.skip(f"{name} is not installed (Debian: apt-get install {package})")
    return path
