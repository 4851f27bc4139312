"""The benchmark scripts still import against the library (they are run by hand, not by CI, so
a renamed function would otherwise break them silently), and every results file says which
commit, date, machine, library versions and command made it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARKS = sorted(BENCHMARKS_DIR.glob("*.py"))
RESULTS = sorted((BENCHMARKS_DIR / "results").glob("*.md"))


@pytest.fixture
def stamp(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS_DIR))  # the scripts import it from beside them
    import stamp

    return stamp


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_script_imports(path: Path, stamp) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # definitions only: each script runs under __main__
    assert callable(getattr(module, "main", None))


def check_stamp(text: str, stamp) -> None:
    fields = stamp.read_stamp(text)
    missing = [name for name in stamp.FIELDS if not fields.get(name)]
    assert not missing, f"stamp fields missing: {missing}"
    assert re.match(r"`[0-9a-f]{7,40}\b", fields["commit"]), fields["commit"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["date"]), fields["date"]
    assert fields["command"].startswith("`") and len(fields["command"]) > 4, fields["command"]
    assert re.search(r"\d+ cores|GPU", fields["machine"]), fields["machine"]
    assert "torch" in fields["versions"], fields["versions"]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_every_results_file_is_stamped(path: Path, stamp) -> None:
    check_stamp(path.read_text(), stamp)


def test_a_results_file_without_its_stamp_fails(stamp) -> None:
    with pytest.raises(AssertionError, match="stamp fields missing"):
        check_stamp("# A benchmark\n\n| model | ms |\n|---|---|\n| v2 | 4.1 |\n", stamp)


def test_write_results_stamps_under_the_title(tmp_path, monkeypatch, stamp) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS_DIR / "cli_startup.py"), "--x", "a|b"])
    out = tmp_path / "r.md"
    stamp.write_results(out, "# Title\n\nbody\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = out.read_text()
    check_stamp(text, stamp)
    assert text.startswith("# Title\n\n| stamp | |\n")
    assert "| command | `python benchmarks/cli_startup.py --x 'a\\|b'` |" in text
    assert text.endswith("body\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")  # the body's table kept
    restamped = stamp.with_stamp(text, stamp.read_stamp(text) | {"date": "2026-01-02"})
    assert restamped.count("| stamp | |") == 1 and "| date | 2026-01-02 |" in restamped
