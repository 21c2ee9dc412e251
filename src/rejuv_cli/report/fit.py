"""Terminal tables that show every cell whole at the console's width, or say they cannot.

Rich shrinks a table that is too wide by cutting cells to "…", numbers included ("0…" at 40
columns). `fit` instead measures what each column needs, lets text wrap only at spaces (column
heads, labels) and never breaks a number or a path, and returns None when that does not fit:
the caller then lays the same values out another way (a table turned on its side, or one line
per value). Each column gets a fixed width, so Rich never has to shrink one.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich import box as boxes
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    """A column: its head (lines; the words of a head wrap at spaces), how it aligns, and
    whether its cells are text that may wrap at spaces (`wrap`) or values never broken."""

    head: str | Text
    justify: str = "right"
    wrap: bool = False
    style: str = ""


def _lines(cell: str | Text) -> list[str]:
    return (cell.plain if isinstance(cell, Text) else cell).split("\n")


def _longest_word(cell: str | Text) -> int:
    return max((cell_len(w) for line in _lines(cell) for w in line.split()), default=0)


def _longest_line(cell: str | Text) -> int:
    return max((cell_len(line) for line in _lines(cell)), default=0)


def fit(width: int, cols: list[Col], rows: list[list[str | Text]], *, box: bool = True,
        **table_args) -> Table | None:  # fmt: skip
    """A table of `rows` whose cells all show whole within `width` columns, or None.

    A column is as wide as its widest cell and head line when all columns fit so; else each
    column gets at least its longest unbreakable piece (a value, a path, a word of a head or
    label) and the spare width goes to the columns that wrap, in proportion to what they
    would still use."""
    natural, minimum = [], []
    for i, c in enumerate(cols):
        cells = [row[i] for row in rows]
        need = [_longest_word(c.head)]
        need += [_longest_word(x) if c.wrap else _longest_line(x) for x in cells]
        minimum.append(max(need + [1]))
        natural.append(max([_longest_line(c.head)] + [_longest_line(x) for x in cells] + [1]))
    n = len(cols)
    overhead = (n + 1 + 2 * n) if box else (2 * n - 2)  # borders and padding
    room = width - overhead
    if sum(minimum) > room:
        return None
    widths = natural
    if sum(natural) > room:
        spare, want = room - sum(minimum), [a - b for a, b in zip(natural, minimum, strict=True)]
        total = sum(want)
        widths = [m + (w * spare // total if total else 0)
                  for m, w in zip(minimum, want, strict=True)]  # fmt: skip
    if box:
        table = Table(box=boxes.HEAVY_HEAD, **table_args)
    else:
        table = Table(box=None, padding=(0, 1), pad_edge=False, **table_args)
    for c, w in zip(cols, widths, strict=True):
        head = c.head if isinstance(c.head, Text) else Text(c.head)
        table.add_column(head, justify=c.justify, style=c.style or None, width=w,
                         no_wrap=False, overflow="fold")  # fmt: skip
    for row in rows:
        table.add_row(*(x if isinstance(x, Text) else Text(x) for x in row))
    return table
