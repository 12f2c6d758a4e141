"""`abgate eval` against the real vLLM: the base model against adapter `a` (docs/evaluation.md).

The tiny model's answers are nonsense, so the cases are built from them: each case's
`expected` is one model's own greedy answer, read from vLLM directly before the run with the
body the runner sends. A suite whose answers are the adapter's must then be a win for the
candidate, a suite whose answers are the base model's a forgetting; the rates, discordant
pairs and outputs in the report must follow from vLLM's answers, and a re-run must answer
from the run directory's cache without calling vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.procs import ROOT, base_env
from tests.vllm.server import VllmServer

PARAMS = {"temperature": 0, "max_tokens": 8, "seed": 0}
N = 8  # cases per suite: 8 discordant pairs give McNemar's exact p = 0.008


def _input(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"def handler_{i}(event, context):"}]


def _answer(vllm: VllmServer, model: str, i: int) -> str:
    body = {"model": model, "messages": _input(i), **PARAMS}
    r = httpx.post(vllm.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _abgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], env=base_env(COLUMNS="200"), cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _spec(tmp: Path, answers: dict[str, list[str]]) -> Path:
    suites = {
        "adapter answers": ("target", "candidate", 0),
        "base answers": ("regression", "base", N),
    }
    lines = [
        f"name: gb-vllm\nparams: {json.dumps(PARAMS)}\nsuites:",
    ]
    for name, (role, side, first) in suites.items():
        cases = tmp / f"{side}.jsonl"
        cases.write_text("".join(
            json.dumps({"id": f"c{i}", "input": _input(i), "expected": answers[side][i]}) + "\n"
            for i in range(first, first + N)
        ))  # fmt: skip
        lines.append(
            f"  - name: {name}\n    role: {role}\n    cases: {cases.name}\n"
            "    grader: {type: exact}\n    thresholds: {min_n: 5}"
        )
    spec = tmp / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def _run(vllm: VllmServer, spec: Path, run_dir: Path, candidate: str = "a") -> Any:
    return _abgate(
        "eval", "--spec", str(spec), "--base-url", vllm.url + "/v1", "--base", vllm.model,
        "--candidate", candidate, "--run-dir", str(run_dir), "--no-progress",
        # one call at a time, as the answers above were read: greedy decoding of a batch can
        # differ from a lone request's in the last bits
        "--concurrency", "1",
    )  # fmt: skip


def test_the_gate_against_vllm_follows_from_its_answers(vllm: VllmServer, tmp_path: Path) -> None:
    answers = {
        side: [_answer(vllm, model, i) for i in range(2 * N)]
        for side, model in (("base", vllm.model), ("candidate", "a"))
    }
    same = [answers["base"][i] == answers["candidate"][i] for i in range(2 * N)]
    assert sum(same) <= 1, "the adapter must change most greedy answers"
    spec, run_dir = _spec(tmp_path, answers), tmp_path / "run"

    result = _run(vllm, spec, run_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gate: FAILED" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["base_model"], report["candidate_model"]) == (vllm.model, "a")
    assert report["gate"]["passed"] is False
    assert any("forgetting" in reason for reason in report["gate"]["reasons"])
    suites = {s["name"]: s for s in report["suites"]}
    for name, side, first, verdict in (
        ("adapter answers", "candidate", 0, "win"), ("base answers", "base", N, "forgetting"),
    ):  # fmt: skip
        suite = suites[name]
        agree = sum(same[first : first + N])
        # the side whose answers are expected passes every case, the other only where the
        # two models happened to answer alike
        rates = (1.0, agree / N) if side == "base" else (agree / N, 1.0)
        assert (suite["n"], suite["base_errors"], suite["candidate_errors"]) == (N, 0, 0)
        assert (suite["base_rate"], suite["candidate_rate"]) == rates
        assert suite["test"] == "mcnemar exact"
        discordant = N - agree
        assert suite["discordant"] == ([discordant, 0] if side == "base" else [0, discordant])
        assert suite["p_value"] == min(1.0, 2 * 0.5**discordant)
        assert suite["verdict"] == verdict
        assert suite["delta_points"] == (rates[1] - rates[0]) * 100
        for row in suite["rows"]:
            i = int(row["case_id"][1:])
            assert row["base_output"] == answers["base"][i]
            assert row["candidate_output"] == answers["candidate"][i]
    assert (run_dir / "report.md").read_text().startswith("#")
    assert "adapter answers" in (run_dir / "report.html").read_text()
    outputs = (run_dir / "outputs.jsonl").read_text().splitlines()
    assert len(outputs) == 4 * N  # two suites, two models

    again = _run(vllm, spec, run_dir)
    assert again.returncode == 1, again.stdout + again.stderr
    rerun = json.loads((run_dir / "report.json").read_text())
    assert any(w.startswith(f"{4 * N} outputs reused") for w in rerun["warnings"]), rerun
    assert (run_dir / "outputs.jsonl").read_text().splitlines() == outputs  # nothing called
    assert [s["rows"] for s in rerun["suites"]] == [s["rows"] for s in report["suites"]]


def test_a_candidate_vllm_does_not_serve_stops_the_gate(vllm: VllmServer, tmp_path: Path) -> None:
    """Every call to `gb-missing` is vLLM's 404: exit 3, and the message names the model."""
    answers = {"base": [""] * (2 * N), "candidate": [""] * (2 * N)}
    result = _run(vllm, _spec(tmp_path, answers), tmp_path / "run", candidate="gb-missing")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "gb-missing" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "report.json").exists()
