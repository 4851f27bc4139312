"""Terminal output shared by the commands: one console, JSON, and number formatting.

rich is imported by the functions that draw, not with the module: every command module imports
this one, and ``mobilenets --help`` should not pay for a renderer it never uses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def console() -> Console:
    """A console on stdout; wide when piped, so tables are not wrapped into a file."""
    from rich.console import Console

    is_tty = sys.stdout.isatty()
    return Console(width=None if is_tty else 200, highlight=False, soft_wrap=not is_tty)


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


def fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(d) for d in shape)


def table(title: str | None, columns: list[str], rows: list[list[str]], right: int = 0) -> Table:
    """A rich table whose last ``right`` columns are numbers, right-aligned."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if i >= len(columns) - right else "left")
    for row in rows:
        t.add_row(*row)
    return t
