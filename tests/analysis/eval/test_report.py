"""The report: JSON round trip, the CLI's table cells, Markdown and escaped HTML."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser

from analysis.eval.report import (
    EvalReport,
    failure_examples,
    render_html,
    render_markdown,
    render_table_rows,
    table_headers,
)
from analysis.eval.spec import Thresholds
from analysis.eval.types import CaseOutput, ContaminationHit, Grade
from analysis.eval.verdict import SuiteResult, gate, judge_suite

PASS = Grade(passed=True, score=1.0, detail="ok")
FAIL = Grade(passed=False, score=0.0, detail="expected 'Paris', got 'Lyon'")
XSS = "<script>alert('pwned')</script> & \"quotes\""


def _suite(
    name: str, role: str, both: int, base_only: int, cand_only: int, neither: int
) -> SuiteResult:
    base = [PASS] * (both + base_only) + [FAIL] * (cand_only + neither)
    cand = [PASS] * both + [FAIL] * base_only + [PASS] * cand_only + [FAIL] * neither
    n = len(base)
    ids = [f"{name[:3]}-{i}" for i in range(n)]
    outputs = [
        CaseOutput(case_id=ids[i], model="cand", text=XSS if i == both else f"answer {i}")
        for i in range(n)
    ]
    return judge_suite(
        name,
        "target" if role == "target" else "regression",
        Thresholds(),
        "pass_fail",
        base,
        cand,
        case_ids=ids,
        cand_outputs=outputs,
    )


def report() -> EvalReport:
    suites = [
        _suite("target task", "target", 116, 6, 48, 30),
        _suite("general reasoning", "regression", 72, 2, 1, 25),
        _suite("instruction following", "regression", 70, 18, 1, 11),
        _suite("safety refusals", "regression", 97, 2, 0, 1),
    ]
    start = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
    return EvalReport(
        spec_name="support <v2>",
        base_model="base-8b",
        candidate_model="support-lora-3",
        started_at=start,
        finished_at=start + dt.timedelta(minutes=12),
        fingerprint="ab" * 32,
        grader_config_hash="cd" * 32,
        suites=suites,
        gate=gate(suites),
        contamination=[ContaminationHit(case_id="tar-3", kind="near", score=0.93, train_index=41)],
        warnings=["judge model is the candidate's base"],
    )


def test_json_round_trips() -> None:
    original = report()
    text = original.to_json()
    again = EvalReport.from_json(text)
    assert again == original
    assert again.suites[2].verdict == "forgetting"
    assert '"grader_config_hash"' in text


def test_table_rows_are_the_printed_cells() -> None:
    rows = render_table_rows(report())
    assert table_headers(report()) == ("suite", "base", "fine-tuned", "delta (95 % CI)", "verdict")
    target = rows[0]
    assert target.suite == "target task (200 held-out)"
    assert (target.base, target.candidate) == ("61.0 %", "82.0 %")
    assert re.fullmatch(r"\+21\.0 \[\+1\d\.\d, \+(2\d|3[01])\.\d\]", target.delta), target.delta
    assert target.verdict == "win"
    assert [r.verdict for r in rows] == ["win", "acceptable", "forgetting", "watch"]
    assert rows[3].cells()[1:4] == ("99.0 %", "97.0 %", rows[3].delta)
    assert rows[3].delta.startswith("-2.0 [-")
    assert rows[1].delta.startswith("-1.0 [")


def test_markdown_has_the_table_gate_and_examples() -> None:
    md = render_markdown(report())
    assert "| suite | base | fine-tuned | delta (95 % CI) | verdict |" in md
    assert "| target task (200 held-out) | 61.0 % | 82.0 % | +21.0 [" in md
    assert "**Gate: FAILED**" in md
    assert "- instruction following: forgetting (-17.0 pts" in md
    assert "## Contamination" in md and "training line 42" in md
    assert "## Failure examples" in md
    section = md.split("### instruction following")[1].split("###")[0]
    assert section.count("- `ins-") == 3  # at most three examples per suite
    assert "base pass, fine-tuned fail" in section  # regressions first


def test_failure_examples_prefer_regressions() -> None:
    target = report().suites[0]
    rows = failure_examples(target, limit=8)
    assert len(rows) == 8
    assert all(r.base.passed for r in rows[:6]) and not rows[6].base.passed
    assert failure_examples(target, limit=2) == rows[:2]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]


def test_html_is_self_contained_and_escapes_model_text() -> None:
    page = render_html(report())
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "<script" not in page
    assert "support &lt;v2&gt;" in page
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert parser.links == []
    assert "<table>" in page and page.count("<tr>") == 1 + 4
    assert 'class="v-forgetting"' in page and "Gate: FAILED" in page


def test_markdown_keeps_model_text_inside_code_blocks() -> None:
    md = render_markdown(report())
    blocks = re.findall(r"```\n(.*?)\n```", md, re.S)
    assert any(XSS in block for block in blocks)
    # nowhere outside a code block
    outside = re.sub(r"```\n.*?\n```", "", md, flags=re.S)
    assert "<script>" not in outside
