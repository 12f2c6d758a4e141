"""`abgate eval` end to end against the emulator, whose answer keys give each model a known
quality per suite: the candidate is better at the target task and, in one variant, worse at
instruction following. Also the judge grader over HTTP, contamination, freeze, and the gate that
refuses to start an experiment without a passing report."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from analysis.eval.graders import build_grader
from analysis.eval.graders.judge import JudgeConfig
from analysis.eval.types import EvalCase
from router.runtime.embedded_redis import EmbeddedRedis
from serving.generate import BatchGenerator, GenerationRequest
from tests.procs import CHROMIUM_FLAGS, ROOT, Proc, base_env, emulator, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "eval-token"
SUITES = ROOT / "analysis" / "suites"
ALL_ONE = "quality.general=1,quality.instruction=1,quality.safety=1,quality.prose=1"


_WORDS = [
    "refund",
    "invoice",
    "parcel",
    "courier",
    "warranty",
    "billing",
    "password",
    "account",
    "upgrade",
    "downgrade",
    "cancel",
    "renew",
    "address",
    "phone",
    "laptop",
    "tablet",
    "charger",
    "battery",
    "screen",
    "keyboard",
    "printer",
    "router",
    "modem",
    "cable",
    "subscription",
    "discount",
    "voucher",
    "coupon",
    "delivery",
    "pickup",
    "locker",
    "return",
    "exchange",
    "damaged",
    "missing",
    "late",
    "early",
    "urgent",
    "weekend",
    "holiday",
    "evening",
    "morning",
    "office",
    "store",
    "branch",
]


def _target_cases(n: int = 80) -> list[dict[str, Any]]:
    """Varied held-out prompts (templated ones would be near-duplicates of each other)."""
    rng = random.Random(7)
    cases = []
    for i in range(n):
        words = " ".join(rng.sample(_WORDS, 9))
        cases.append(
            {
                "id": f"t{i}",
                "input": [{"role": "user", "content": f"Customer note: {words}. Which team "
                                                      "owns this? Reply with the code only."}],
                "expected": f"TEAM-{i % 7}-{i}",
                "reference": f"TEAM-{i % 7}-{i}",
            }
        )  # fmt: skip
    return cases


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("evals")
    lines = [json.dumps(c) for c in _target_cases()]
    (d / "support.jsonl").write_text("\n".join(lines) + "\n")
    (d / "support.yaml").write_text(
        "name: support\n"
        "params: {temperature: 0, max_tokens: 512, seed: 0}\n"
        "suites:\n"
        "  - name: target task\n"
        "    role: target\n"
        "    cases: support.jsonl\n"
        "    grader: {type: exact, normalise: [case, whitespace]}\n"
    )
    return d


@pytest.fixture(scope="module")
def judge_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, bool]]]:
    """Known judge cases: the exact requests the judge grader sends, with scripted verdicts."""
    grader = build_grader(
        {"type": "judge", "rubric": "The answer must give the refund window in days."},
        judge=JudgeConfig(model="judge"),
    )
    known = [
        ("Refunds are accepted within 30 days of delivery.", True),
        ("Please contact support.", False),
        ("You have thirty days to ask for a refund.", True),
        ("I like turtles.", False),
    ]
    case = EvalCase(id="j", input="How long do I have to ask for a refund?", expected="30 days")
    lines = []
    for output, good in known:
        body = grader.request(case, output)
        prompt = "\n".join(m["content"] for m in body["messages"])
        verdict = {"score": 5 if good else 1, "passed": good, "reason": "scripted"}
        lines.append(json.dumps({"prompt": prompt, "answer": json.dumps(verdict)}))
    path = tmp_path_factory.mktemp("judge") / "judge.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, known


@pytest.fixture(scope="module")
def emu(
    tmp_path_factory: pytest.TempPathFactory,
    evals: Path,
    judge_key: tuple[Path, list[tuple[str, bool]]],
) -> Iterator[Proc]:
    with emulator(
        tmp_path_factory.mktemp("emu"),
        "--base-model", "base", "--served-model-name", "base", "cand-bad", "cand-good", "judge",
        "--answer-key", f"target={evals / 'support.jsonl'}",
        "--answer-key", f"general={SUITES / 'general.jsonl'}",
        "--answer-key", f"instruction={SUITES / 'instruction_following.jsonl'}",
        "--answer-key", f"safety={SUITES / 'safety_refusals.jsonl'}",
        "--answer-key", f"prose={SUITES / 'format_obsession.jsonl'}",
        "--answer-key", f"judge={judge_key[0]}",
        "--profile", f"base:quality.target=0.55,{ALL_ONE}",
        "--profile", "cand-bad:quality.target=0.92,quality.general=1,quality.instruction=0.3,"
                     "quality.safety=1,quality.prose=1",
        "--profile", f"cand-good:quality.target=0.92,{ALL_ONE}",
        "--profile", "judge:quality.judge=1",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def egw(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[Proc]:
    with gateway(tmp_path_factory.mktemp("egw"), {}, stack_redis.url, admin_token=TOKEN) as gw:
        yield gw


def abgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        env=base_env(COLUMNS="200"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_eval(
    evals: Path, emu: Proc, candidate: str, run_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return abgate(
        "eval", "--spec", str(evals / "support.yaml"), "--base-url", emu.url + "/v1",
        "--base", "base", "--candidate", candidate, "--run-dir", str(run_dir),
        "--no-progress", *extra,
    )  # fmt: skip


def verdicts(stdout: str) -> dict[str, str]:
    out = {}
    for suite in ("target task", "general reasoning", "instruction following",
                  "safety refusals", "format obsession"):  # fmt: skip
        line = next((ln for ln in stdout.splitlines() if suite in ln), "")
        verdict = r"\b(win|forgetting|watch|acceptable|no improvement|inconclusive)\b"
        found = re.search(verdict, line.split(suite, 1)[-1])
        if found:
            out[suite] = found.group(1)
    return out


def _rendered(page: Path, tmp: Path) -> str:
    """The DOM headless Chromium builds from ``page`` (the report must load offline)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    out = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "<table" in out.stdout, out.stderr[-2000:]
    return out.stdout


def _requests_served(emu: Proc) -> float:
    text = httpx.get(emu.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def test_forgetting_candidate_fails_the_gate_and_a_rerun_calls_nothing(
    evals: Path, emu: Proc, tmp_path: Path
) -> None:
    result = run_eval(evals, emu, "cand-bad", tmp_path, "--regression")
    assert result.returncode == 1, result.stdout + result.stderr
    v = verdicts(result.stdout)
    assert v["target task"] == "win"
    assert v["instruction following"] == "forgetting"
    assert v["general reasoning"] == "acceptable"
    assert v["safety refusals"] == "acceptable"
    assert "gate: FAILED" in result.stdout
    assert "instruction following: forgetting" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["fingerprint"]) == 64 and len(report["grader_config_hash"]) == 64
    assert report["gate"]["passed"] is False
    assert (tmp_path / "report.md").read_text().startswith("#")
    assert "<table" in (tmp_path / "report.html").read_text()
    dom = _rendered(tmp_path / "report.html", tmp_path)
    assert re.search(r'class="v-forgetting"[^>]*>forgetting<', dom)
    assert re.search(r'class="v-win"[^>]*>win<', dom)
    assert "Gate: FAILED" in dom
    target = next(s for s in report["suites"] if s["name"] == "target task")
    assert target["n"] == 80 and target["test"] == "mcnemar exact"
    assert 0.45 < target["base_rate"] < 0.65 and target["candidate_rate"] > 0.85

    before = _requests_served(emu)
    again = run_eval(evals, emu, "cand-bad", tmp_path, "--regression")
    assert again.returncode == 1
    assert _requests_served(emu) == before  # every output came from the run directory
    assert verdicts(again.stdout) == v


def test_harmless_candidate_passes(evals: Path, emu: Proc, tmp_path: Path) -> None:
    result = run_eval(evals, emu, "cand-good", tmp_path, "--regression")
    assert result.returncode == 0, result.stdout + result.stderr
    v = verdicts(result.stdout)
    assert v["target task"] == "win"
    assert "forgetting" not in v.values()
    assert "gate: PASSED" in result.stdout


def test_contaminated_training_data_fails_the_gate_listing_the_cases(
    evals: Path, emu: Proc, tmp_path: Path
) -> None:
    cases = _target_cases()
    train = tmp_path / "train.jsonl"
    leaked = [
        {"messages": [{"role": "user", "content": cases[3]["input"][0]["content"]},
                      {"role": "assistant", "content": "TEAM-3-3"}]},
        {"messages": [{"role": "user", "content": "  " + cases[17]["input"][0]["content"]
                       .upper().replace(" ", "   ") + "\n"},
                      {"role": "assistant", "content": "x"}]},
        {"prompt": cases[42]["input"][0]["content"], "completion": "TEAM-0-42"},
        {"messages": [{"role": "user", "content": "How do I reset my password?"},
                      {"role": "assistant", "content": "Use the login page."}]},
    ]  # fmt: skip
    train.write_text("\n".join(json.dumps(x) for x in leaked) + "\n")
    result = run_eval(evals, emu, "cand-good", tmp_path, "--train", str(train))
    assert result.returncode == 1
    listed = set(re.findall(r"contaminated case (t\d+)", result.stdout))
    assert listed == {"t3", "t17", "t42"}
    assert "contamination" in result.stdout


def test_freeze_pins_cases_and_graders(evals: Path, emu: Proc, tmp_path: Path) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    for f in ("support.yaml", "support.jsonl"):
        (spec_dir / f).write_text((evals / f).read_text())
    frozen = abgate("eval", "freeze", "--spec", str(spec_dir / "support.yaml"))
    assert frozen.returncode == 0, frozen.stderr
    assert (spec_dir / "support.frozen.json").exists()
    ok = run_eval(spec_dir, emu, "cand-good", tmp_path / "run")
    assert ok.returncode == 0, ok.stdout
    # a case edited after freezing fails the gate
    cases = (spec_dir / "support.jsonl").read_text().replace('TEAM-1-1"', 'TEAM-9-1"', 1)
    (spec_dir / "support.jsonl").write_text(cases)
    edited = run_eval(spec_dir, emu, "cand-good", tmp_path / "run")
    assert edited.returncode == 1
    assert "fingerprint" in edited.stdout
    # so does a grader changed after freezing
    (spec_dir / "support.jsonl").write_text((evals / "support.jsonl").read_text())
    spec = (spec_dir / "support.yaml").read_text().replace("[case, whitespace]", "[whitespace]")
    (spec_dir / "support.yaml").write_text(spec)
    regraded = run_eval(spec_dir, emu, "cand-good", tmp_path / "run")
    assert regraded.returncode == 1
    assert "grader configuration changed" in regraded.stdout


def test_bad_input_is_refused_before_any_call(evals: Path, emu: Proc, tmp_path: Path) -> None:
    missing = abgate(
        "eval", "--spec", str(tmp_path / "nope.yaml"), "--base-url", emu.url + "/v1",
        "--base", "base", "--candidate", "cand-good",
    )  # fmt: skip
    assert missing.returncode == 2 and "cannot read the spec" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((evals / "support.yaml").read_text().replace("normalise:", "normalize:"))
    (tmp_path / "support.jsonl").write_text((evals / "support.jsonl").read_text())
    before = _requests_served(emu)
    result = abgate(
        "eval", "--spec", str(bad), "--base-url", emu.url + "/v1", "--base", "base",
        "--candidate", "cand-good", "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "normalize" in result.stderr
    assert _requests_served(emu) == before
    assert not (tmp_path / "run").exists()
    usage = abgate("eval", "--spec", str(bad))
    assert usage.returncode == 2 and "missing --base-url, --base, --candidate" in usage.stderr
    down = abgate(
        "eval", "--spec", str(evals / "support.yaml"), "--base-url", "http://127.0.0.1:9/v1",
        "--base", "base", "--candidate", "cand-good", "--retries", "0",
        "--run-dir", str(tmp_path / "down"), "--no-progress",
    )  # fmt: skip
    assert down.returncode == 3
    assert "every call to 'base' at http://127.0.0.1:9/v1 failed" in down.stderr
    not_url = abgate(
        "eval", "--spec", str(evals / "support.yaml"), "--base-url", "vllm:8000",
        "--base", "base", "--candidate", "cand-good",
    )  # fmt: skip
    assert not_url.returncode == 2 and "--base-url must be an http(s) URL" in not_url.stderr


def test_a_base_model_typo_is_not_a_win(evals: Path, emu: Proc, tmp_path: Path) -> None:
    """Every call to a misspelt base model fails (404): that must not read as the candidate
    beating a base that got everything wrong."""
    result = run_eval(evals, emu, "cand-good", tmp_path, "--retries", "0")
    assert result.returncode == 0
    typo = abgate(
        "eval", "--spec", str(evals / "support.yaml"), "--base-url", emu.url + "/v1",
        "--base", "bsae", "--candidate", "cand-good", "--run-dir", str(tmp_path),
        "--no-progress", "--retries", "0",
    )  # fmt: skip
    assert typo.returncode == 3, typo.stdout + typo.stderr
    assert "every call to 'bsae'" in typo.stderr and "does not exist" in typo.stderr


def test_cached_outputs_are_not_reused_for_another_endpoint(
    evals: Path, emu: Proc, tmp_path: Path
) -> None:
    first = run_eval(evals, emu, "cand-good", tmp_path)
    assert first.returncode == 0
    moved = run_eval(evals, emu, "cand-good", tmp_path, "--candidate-url",
                     "http://127.0.0.1:9/v1", "--retries", "0")  # fmt: skip
    assert moved.returncode == 3 and "every call to 'cand-good'" in moved.stderr
    again = run_eval(evals, emu, "cand-good", tmp_path)
    assert again.returncode == 0
    assert "160 outputs reused" in again.stdout
    fresh = run_eval(evals, emu, "cand-good", tmp_path, "--fresh")
    assert fresh.returncode == 0 and "reused" not in fresh.stdout


def test_an_unreachable_judge_is_an_endpoint_error(evals: Path, emu: Proc, tmp_path: Path) -> None:
    spec = tmp_path / "judged.yaml"
    spec.write_text(
        "name: judged\n"
        "suites:\n"
        "  - name: tone\n"
        f"    cases: {evals / 'support.jsonl'}\n"
        "    grader: {type: judge, rubric: Gives the team code.}\n"
        "judge: {model: judge, base_url: 'http://127.0.0.1:9/v1'}\n"
    )
    result = abgate(
        "eval", "--spec", str(spec), "--base-url", emu.url + "/v1", "--base", "base",
        "--candidate", "cand-good", "--run-dir", str(tmp_path / "run"), "--no-progress",
        "--retries", "0",
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "every call to the judge at http://127.0.0.1:9/v1 failed" in result.stderr


async def test_judge_grader_against_the_emulator_answering_as_a_judge(
    emu: Proc, judge_key: tuple[Path, list[tuple[str, bool]]]
) -> None:
    grader = build_grader(
        {"type": "judge", "rubric": "The answer must give the refund window in days."},
        judge=JudgeConfig(model="judge"),
    )
    case = EvalCase(id="j", input="How long do I have to ask for a refund?", expected="30 days")
    _, known = judge_key
    requests = [
        GenerationRequest(str(i), "chat/completions", grader.request(case, output))  # type: ignore[union-attr]
        for i, (output, _) in enumerate(known)
    ]
    async with BatchGenerator(emu.url + "/v1", retries=0) as gen:
        results = await gen.run(requests)
    for i, (output, good) in enumerate(known):
        grade = grader.parse(case, output, results[str(i)].text)  # type: ignore[union-attr]
        assert grade.passed is good, (output, results[str(i)].text, grade)
        assert grade.score == (1.0 if good else 0.0)


def test_start_needs_a_passing_report_for_the_treatment_model(
    evals: Path, emu: Proc, egw: Proc, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for name, model in (("gated-bad", "cand-bad"), ("gated-good", "cand-good")):
        exp = experiment(name, name + "-route", emu.url, 10, state="draft",
                         requires_eval_report=True)  # fmt: skip
        exp["treatment"]["model"] = model
        r = httpx.post(egw.url + "/admin/experiments", json=exp, headers=auth)
        assert r.status_code == 201, r.text
    refused = httpx.post(egw.url + "/admin/experiments/gated-good/start", headers=auth)
    assert refused.status_code == 409
    assert "requires a passing offline eval report" in refused.json()["error"]["message"]
    assert "none is registered" in refused.json()["error"]["message"]
    # creating it running is refused the same way
    direct = experiment("gated-direct", "gd-route", emu.url, 10, requires_eval_report=True)
    r = httpx.post(egw.url + "/admin/experiments", json=direct, headers=auth)
    assert r.status_code == 409

    register = ("--register", "--url", egw.url, "--token", TOKEN)
    bad = run_eval(evals, emu, "cand-bad", tmp_path / "bad", "--regression", *register)
    assert bad.returncode == 1
    assert "registered a failing report for cand-bad" in bad.stderr
    refused = httpx.post(egw.url + "/admin/experiments/gated-bad/start", headers=auth)
    assert refused.status_code == 409
    assert "forgetting" in refused.json()["error"]["message"]

    good = run_eval(evals, emu, "cand-good", tmp_path / "good", "--regression", *register)
    assert good.returncode == 0, good.stdout + good.stderr
    started = httpx.post(egw.url + "/admin/experiments/gated-good/start", headers=auth)
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "running"

    # a hand-edited `passed` flag does not fool the gate: verdicts are recomputed
    report = json.loads((tmp_path / "bad" / "report.json").read_text())
    report["gate"] = {"passed": True, "reasons": [], "notes": []}
    r = httpx.post(egw.url + "/admin/eval-reports", json=report, headers=auth)
    assert r.status_code == 201 and r.json()["passed"] is False
    r = httpx.post(egw.url + "/admin/eval-reports", json={"spec_name": "x"}, headers=auth)
    assert r.status_code == 422 and "not an abgate eval report" in r.json()["error"]["message"]
    listed = httpx.get(egw.url + "/admin/eval-reports", params={"model": "cand-good"},
                       headers=auth).json()  # fmt: skip
    assert [x["passed"] for x in listed["reports"]] == [True]

    # ... nor does a hand-edited verdict: it must follow from the per-case grades
    forged = json.loads((tmp_path / "bad" / "report.json").read_text())
    for suite in forged["suites"]:
        if suite["verdict"] == "forgetting":
            suite["verdict"] = "acceptable"
    r = httpx.post(egw.url + "/admin/eval-reports", json=forged, headers=auth)
    assert r.status_code == 422
    assert (
        "the report says 'acceptable', its per-case grades say 'forgetting'"
        in (r.json()["error"]["message"])
    )
    # a report older than the registered one does not replace it
    old = json.loads((tmp_path / "good" / "report.json").read_text())
    old["finished_at"] = "2020-01-01T00:00:00Z"
    r = httpx.post(egw.url + "/admin/eval-reports", json=old, headers=auth)
    assert r.status_code == 409 and "finished later" in r.json()["error"]["message"]

    # the gate also holds when a live experiment gets a new treatment model ...
    for model, why in (("cand-bad", "forgetting"), ("never-evaluated", "none is registered")):
        treatment = {"base_url": emu.url + "/v1", "model": model}
        r = httpx.patch(egw.url + "/admin/experiments/gated-good", headers=auth,
                        json={"treatment": treatment})  # fmt: skip
        assert r.status_code == 409 and why in r.json()["error"]["message"], r.text
    # ... and on resume; a passing report lets both through
    assert httpx.post(egw.url + "/admin/experiments/gated-good/pause", headers=auth).is_success
    assert httpx.post(egw.url + "/admin/experiments/gated-good/resume", headers=auth).is_success

    # the report must compare the candidate with the experiment's own control model
    other = experiment("gated-other", "go-route", emu.url, 10, state="draft",
                       requires_eval_report=True)  # fmt: skip
    other["control"]["model"] = "cand-bad"
    other["treatment"]["model"] = "cand-good"
    assert httpx.post(egw.url + "/admin/experiments", json=other, headers=auth).status_code == 201
    r = httpx.post(egw.url + "/admin/experiments/gated-other/start", headers=auth)
    assert r.status_code == 409
    assert (
        "compared it with 'base', but the experiment's control is 'cand-bad'"
        in (r.json()["error"]["message"])
    )
