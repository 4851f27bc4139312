"""MkDocs hook: the benchmarks' index and results files are pages of the site.

They live in ``benchmarks/`` beside the scripts that write them, outside ``docs/``; this adds
them under ``benchmarks/`` in the site, so the docs link to them and ``mkdocs build
--strict`` checks those links like any other.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def on_files(files, config):
    sources = [BENCHMARKS / "README.md"]
    sources += sorted(p for p in (BENCHMARKS / "results").iterdir() if p.suffix in {".md", ".png"})
    for path in sources:
        uri = path.relative_to(BENCHMARKS.parent).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
