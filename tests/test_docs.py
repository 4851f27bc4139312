"""The docs site builds with ``mkdocs build --strict`` (the documented command), and that
setting fails on a broken link or a reference to a name the package does not have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
pytestmark = pytest.mark.slow  # a few seconds each, most of it importing mkdocs and griffe


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )


def test_the_docs_site_builds_strict(tmp_path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "models" / "index.html").is_file()
    assert "DepthwiseConv" in (tmp_path / "site" / "api" / "models" / "index.html").read_text()
    assert (tmp_path / "site" / "benchmarks" / "results" / "latency_model" / "index.html").is_file()


@pytest.mark.parametrize(
    "page",
    [
        "[a page that is not there](nowhere.md)",
        "::: mobilenets.no_such_module",
        "See [a name the package lacks][mobilenets.analysis.cost.no_such_function].",
    ],
    ids=["broken link", "missing module", "missing cross-reference"],
)
def test_the_strict_build_fails_on(tmp_path, page: str) -> None:
    """The project's own settings (strict, validation, mkdocstrings) on a one-page site."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config.update(docs_dir=str(tmp_path / "docs"), nav=[{"Home": "index.md"}])
    config.pop("hooks", None)
    config.pop("exclude_docs", None)
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Home\n\n{page}\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0, done.stdout + done.stderr
