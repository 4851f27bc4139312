"""The README's test command is the one CI runs, its Python tour runs as written, and every
``mobilenets`` command in the README and the docs is one the real parser takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


DOCS = sorted((ROOT / "docs").rglob("*.md"))


def bash_blocks(path: Path = ROOT / "README.md") -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


def readme_commands(path: Path = ROOT / "README.md") -> list[list[str]]:
    """Every ``mobilenets`` command of a page's shell blocks as argv (after ``mobilenets``, or
    ``-m mobilenets`` under torchrun), comments and redirections dropped."""
    import shlex

    commands = []
    for block in bash_blocks(path):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "mobilenets" not in words or words[0] == "#":
                continue
            argv = words[words.index("mobilenets") + 1 :]
            commands.append(argv[: argv.index(">")] if ">" in argv else argv)
    return commands


def test_the_tour_activates_the_environment_before_its_first_command() -> None:
    tour = bash_blocks()[2]  # after the two commands
    lines = [line.split("#")[0].strip() for line in tour.splitlines()]
    assert lines[0] == "source .venv/bin/activate"


def test_every_readme_and_docs_command_is_one_the_cli_takes() -> None:
    from mobilenets.cli import build_parser

    parser = build_parser()
    commands = [
        (path, argv) for path in [ROOT / "README.md", *DOCS] for argv in readme_commands(path)
    ]
    assert len(commands) >= 20
    assert {path.name for path, _ in commands} >= {"README.md", "training.md", "int8.md"}
    for path, argv in commands:
        args = parser.parse_args(argv)  # an unknown command or flag exits here
        assert args.command is not None, (path.name, argv)


@pytest.mark.slow
def test_the_tour_runs_as_written_at_80_columns(tmp_path, monkeypatch, capsys) -> None:
    """The first block's commands, run for real in an 80-column terminal: no number is cut."""
    from mobilenets.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    tour = [argv for argv in readme_commands() if argv and argv[0] in ("models", "cost")][:4]
    assert [argv[0] for argv in tour] == ["models", "cost", "cost", "cost"]
    for argv in tour:
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert "…" not in out, argv
        if "--json" not in argv:
            table_lines = [line for line in out.splitlines() if "│" in line or "┃" in line]
            assert table_lines and max(len(line.rstrip()) for line in table_lines) <= 80, argv
    assert main(["cost", "mobilenet_v2"]) == 0
    assert "300,774,272" in capsys.readouterr().out  # the number the tour's comment promises
