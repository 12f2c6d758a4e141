"""Tables that stay readable in a narrow terminal: names whole, text wrapped, extras dropped.

A column is one of three kinds:

- ``name``: a name or a short value (an experiment, a route, a state, a count). It is printed
  whole on one line.
- ``text``: free text (a change and its reason, a path): it wraps at spaces and folds words
  longer than the column.
- ``extra``: useful but not needed to act (models, error counts: `--json` has them), printed
  whole when there is room, else dropped, the last listed first; a caption names what was left
  out.

The width is the console's: the terminal's, or ``COLUMNS``, 80 when the output is not a
terminal. Only when the names alone are wider than that do they fold onto a second line; no
cell is ever cut short with an ellipsis, which is how rich handles a table too wide by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

Kind = Literal["name", "text", "extra"]
_GAP = 3  # between two columns: a space of padding on each side and the rule
_TEXT_FLOOR = 12  # a text column narrower than this is a column of broken words
_FOLD_FLOOR = 6  # the narrowest a column gets when nothing else fits


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    kind: Kind = "name"
    justify: Literal["left", "right"] = "left"


def fitted(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> Table:
    """The table of ``rows`` that fits ``console``, dropping ``extra`` columns if it must."""
    minimums = [_minimum(col, [r[i] for r in rows]) for i, col in enumerate(columns)]
    keep = list(range(len(columns)))
    extras = [i for i, c in enumerate(columns) if c.kind == "extra"]
    dropped: list[str] = []
    while extras and sum(minimums[i] for i in keep) + _gaps(keep) > console.width:
        gone = extras.pop()
        keep.remove(gone)
        dropped.insert(0, columns[gone].header)
    kept = [columns[i] for i in keep]
    widths = _last_resort(kept, [minimums[i] for i in keep], console.width - _gaps(keep))
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for n, i in enumerate(keep):
        col = columns[i]
        table.add_column(
            col.header,
            justify=col.justify,
            no_wrap=col.kind != "text" and widths is None,  # folds only as a last resort
            overflow="fold",
            min_width=minimums[i] if col.kind == "text" else None,
            width=widths[n] if widths else None,
        )
    for row in rows:
        table.add_row(*(Text(row[i]) for i in keep))  # cells are data, never rich markup
    if dropped:
        table.caption = f"too narrow for {', '.join(dropped)}: widen the terminal or use --json"
    return table


def _gaps(keep: list[int]) -> int:
    return _GAP * max(0, len(keep) - 1)


def _minimum(col: Column, cells: Sequence[str]) -> int:
    """The narrowest a column can be: a name at its longest (header included: it does not
    wrap either), text at a few words' width (its header wraps at spaces)."""
    longest = max((cell_len(line) for cell in cells for line in cell.splitlines()), default=0)
    if col.kind != "text":
        return max(cell_len(col.header), longest, 1)
    header = max((cell_len(word) for word in col.header.split()), default=0)
    return max(header, min(longest, _TEXT_FLOOR), 1)


def _last_resort(columns: list[Column], minimums: list[int], room: int) -> list[int] | None:
    """Explicit widths when even the minimums do not fit: text columns give way first, then
    the widest names, whose cells then fold onto more lines (nothing is cut). None when the
    minimums fit, and rich shares the room out by itself."""
    if sum(minimums) <= room:
        return None
    widths = list(minimums)
    for kinds in (("text",), ("name", "extra")):
        while sum(widths) > room:
            candidates = [
                n for n, c in enumerate(columns) if c.kind in kinds and widths[n] > _FOLD_FLOOR
            ]
            if not candidates:
                break
            widest = max(candidates, key=lambda n: widths[n])
            widths[widest] -= 1
    return widths
