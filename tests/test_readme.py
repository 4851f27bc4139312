"""The README's test command is the one CI runs, and its Python tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]  # fmt: skip
    assert len(ci_lines) == 1
    assert ci_lines[0] in readme
    assert "torch==2.13.0" in ci_lines[0]


def test_readme_python_tour_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    exec(compile(blocks[0], "README.md", "exec"), {})
