"""bench/demo_runs.py counts a run only when the demo exited 0 with every experiment in its
intended state; bench/stats_study.py's `aa_minute` rows read its replications."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import demo_runs, stats_study
from router.demo.run import INTENDED

GOOD = (0, {"support-v2": "promoted", "billing-v1": "rolled_back"}, "")


def test_summary_line_parses_the_demos_own_lines() -> None:
    text = (  # the live view's last frame ends without a newline when not on a terminal
        "| billing-v1 | rolled_back | 0% | [-0.5...      "
        "support-v2: promoted -> report /r/support-v2.html\n"
        "    advance at 5%: ...\n"
        "billing-v1: rolled_back -> report /r/billing-v1.html\n"
    )
    assert dict(demo_runs.SUMMARY.findall(text)) == INTENDED


@pytest.mark.parametrize(
    ("results", "code", "line"),
    [
        ([GOOD, GOOD], 0, "2 of 2 runs reached the intended end states"),
        (
            [GOOD, (0, {"support-v2": "running", "billing-v1": "rolled_back"}, "timed out")],
            1,
            "1 of 2 runs reached the intended end states",
        ),
        ([GOOD, (1, dict(GOOD[1]), "crashed after the end")], 1, "1 of 2 runs"),
    ],
)
def test_only_intended_end_states_count(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    results: list[tuple[int, dict[str, str], str]],
    code: int,
    line: str,
) -> None:
    queue = list(results)

    def fake(reports: Path, *, short: bool, timeout: float) -> tuple[int, dict[str, str], str]:
        return queue.pop(0)

    monkeypatch.setattr(demo_runs, "one_run", fake)
    assert demo_runs.main(["--runs", str(len(results))]) == code
    out = capsys.readouterr().out
    assert line in out
    assert out.count("FAIL") == sum(r is not GOOD for r in results)


def test_aa_minute_rows_count_actions_and_their_hours() -> None:
    x = {
        "promote": np.array([0.0, 1.0, 0.0, 0.0]),
        "rollback": np.array([0.0, 0.0, 1.0, 0.0]),
        "pause": np.zeros(4),
        "hold": np.array([1.0, 0.0, 0.0, 1.0]),
        "hours": np.array([np.nan, 30.0, 50.0, np.nan]),
    }
    rows = dict((label.strip(), value) for label, value, _ in stats_study._rows("aa_minute", x))
    assert rows["6d. A/A, whole ramp from 5 %, a look every 60 s, 14 days: any action"] == "50.0 %"
    assert rows["... rolled back"] == "25.0 %" and rows["... promoted"] == "25.0 %"
    assert rows["... median hour of the actions"] == "40"
    none = {**x, "promote": np.zeros(4), "rollback": np.zeros(4), "hours": np.full(4, np.nan)}
    rows = dict((label.strip(), value) for label, value, _ in stats_study._rows("aa_minute", none))
    assert rows["... median hour of the actions"] == "-"
