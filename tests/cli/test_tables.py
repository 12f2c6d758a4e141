"""Tables at 80 columns: names whole on one line, free text wrapped, extras dropped with a
caption, and never a cell cut short with an ellipsis."""

from __future__ import annotations

import io

from rich.console import Console

from router.cli.tables import Column, fitted

COLUMNS = [
    Column("name"), Column("route"), Column("state"), Column("share", justify="right"),
    Column("requests c/t", justify="right"), Column("errors c/t", "extra", "right"),
    Column("control model", "extra"), Column("treatment model", "extra"),
]  # fmt: skip
ROWS = [
    ["support-lora-v3-ramp", "support-bot", "running", "25%", "12034/4011", "12/3",
     "meta-llama/Llama-3.1-8B-Instruct", "support-lora-v3"],
    ["billing-v1", "billing-bot", "rolled_back", "0%", "100/10", "0/0",
     "meta-llama/Llama-3.1-8B-Instruct", "billing-lora-v1"],
]  # fmt: skip


def render(width: int, columns: list[Column], rows: list[list[str]]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False)
    console.print(fitted(console, columns, rows, title="experiments"))
    return out.getvalue()


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def test_names_stay_whole_and_extras_go_at_80_columns() -> None:
    text = render(80, COLUMNS, ROWS)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for row in ROWS:
        line = next(ln for ln in lines_of(text) if ln.startswith(row[0]))
        assert line.split()[:5] == row[:5]  # one line per experiment, every name whole
    assert "control model" not in text.split("too narrow")[0]
    assert "too narrow for" in text and "--json" in text


def test_a_wide_terminal_shows_every_column() -> None:
    text = render(200, COLUMNS, ROWS)
    assert "too narrow" not in text
    for row in ROWS:
        line = next(ln for ln in lines_of(text) if ln.startswith(row[0]))
        assert line.split() == row


def test_text_wraps_and_names_do_not() -> None:
    columns = [Column("experiment"), Column("change (reason)", "text")]
    reason = "treatment_percent: 5.0 -> 25.0 (error rate flat for two days, latency fine too)"
    text = render(60, columns, [["support-lora-v3-ramp", reason]])
    assert max(len(line) for line in text.splitlines()) <= 60
    body = lines_of(text)[3:]
    assert body[0].startswith("support-lora-v3-ramp ")
    assert " ".join(" ".join(ln.split()[1:]) if i == 0 else ln.strip()
                    for i, ln in enumerate(body)).split() == reason.split()  # fmt: skip


def test_names_wider_than_the_terminal_fold_rather_than_being_cut() -> None:
    name = "an-experiment-name-that-is-far-too-long-for-a-narrow-terminal-window"
    text = render(40, [Column("name"), Column("state")], [[name, "running"]])
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 40
    assert name in "".join(line.strip().split(" ")[0] for line in text.splitlines()[3:])


def test_cells_are_printed_as_data_not_markup() -> None:
    text = render(80, [Column("name"), Column("reason", "text")], [["x", "[bold]not markup[/]"]])
    assert "[bold]not markup[/]" in text
