"""Terminal output shared by the commands: one console, JSON, and number formatting.

rich is imported by the functions that draw, not with the module: every command module imports
this one, and ``mobilenets --help`` should not pay for a renderer it never uses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def console() -> Console:
    """A console on stdout; wide when piped, so tables are not wrapped into a file."""
    from rich.console import Console

    is_tty = sys.stdout.isatty()
    # COLUMNS, when set, is the width asked for (a script formatting for a terminal; tests).
    width = None if is_tty else int(os.environ.get("COLUMNS") or 200)
    return Console(width=width, highlight=False, soft_wrap=not is_tty)


def show(as_json: bool, data: Any, views: Iterable[Any]) -> int:
    """The one way a command prints its result: ``data`` as indented JSON with ``--json``
    (for scripts), else each of ``views`` (tables and lines, for people). Pass ``views`` as a
    generator: it is then only built when shown. Returns the exit status, 0."""
    if as_json:
        print_json(data)
        return 0
    out = console()
    for view in views:
        out.print(view)
    return 0


def print_json(obj: Any) -> None:
    """Machine-readable output: indented JSON on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_percent(x: float | None) -> str:
    """A share as a percentage, "-" where there is none (nothing was measured)."""
    return "-" if x is None else f"{x:.1%}"


def fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(d) for d in shape)


def table(
    title: str | None, columns: list[str], rows: list[list[str]], right: int = 0, key: int = 1
) -> FittedTable:
    """A table whose last ``right`` columns are numbers, right-aligned, that never cuts a
    number to fit the terminal (:class:`FittedTable`); its first ``key`` columns name a row."""
    return FittedTable(title, columns, rows, right, key)


class FittedTable:
    """A table that fits the terminal without cutting anything.

    rich shrinks a table that is too wide by ending cells in an ellipsis, numbers included
    (``1,990,…`` at 80 columns). Here every number keeps its full width. When the columns do
    not fit side by side they are folded: the table is drawn as several tables, each repeating
    the ``key`` columns that name a row and carrying as many of the other columns as fit. A
    text cell wider than a whole line (a long layer name) folds onto a second line.
    """

    SEPARATOR = 3  # " │ " between two columns

    def __init__(
        self, title: str | None, columns: list[str], rows: list[list[str]], right: int, key: int
    ) -> None:
        self.title, self.columns, self.rows = title, columns, rows
        self.numbers = set(range(len(columns) - right, len(columns)))
        self.key = list(range(min(key, len(columns))))

    def natural_width(self, i: int) -> int:
        """The column's longest cell, or the longest word of its header (which may wrap)."""
        cells = [len(row[i]) for row in self.rows]
        return max([*cells, *(len(word) for word in self.columns[i].split())])

    def groups(self, width: int) -> list[list[int]]:
        """The non-key columns in order, split into runs that fit beside the key columns."""
        key_width = sum(self.natural_width(i) + self.SEPARATOR for i in self.key)
        key_width = min(key_width, width // 2)  # a long name folds rather than crowd out
        groups: list[list[int]] = [[]]
        used = key_width
        for i in range(len(self.key), len(self.columns)):
            need = self.natural_width(i) + self.SEPARATOR
            if groups[-1] and used + need > width:
                groups.append([])
                used = key_width
            groups[-1].append(i)
            used += need
        return groups

    def render(self, columns: list[int], title: str | None) -> Table:
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for i in columns:
            if i in self.numbers:
                t.add_column(self.columns[i], justify="right", min_width=self.natural_width(i))
            else:
                t.add_column(self.columns[i], justify="left", overflow="fold")
        for row in self.rows:
            t.add_row(*(row[i] for i in columns))
        return t

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Table]:
        for n, group in enumerate(self.groups(options.max_width)):
            yield self.render(self.key + group, self.title if n == 0 else None)
