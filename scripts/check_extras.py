"""Install each optional extra alone, and the runtime extras one after another, each in a fresh
virtual environment, and check that pip finds no broken requirement (``pip check``) and that the
extra's runtime imports.

Installs take minutes each and pull gigabytes (LiteRT brings JAX), so this is run by hand after a
change to the extras, not by the test suite::

    python scripts/check_extras.py                      # every scenario
    python scripts/check_extras.py executorch,litert    # one: executorch, then litert

A scenario is a comma-separated order of extras, installed one ``pip install`` at a time as a user
would. Prints one line per scenario and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [
    "executorch",
    "litert",
    "openvino",
    "quant",
    "elpv",
    "docs",
    "executorch,litert",
    "litert,executorch",
    "openvino,executorch,litert",
]
# What each extra must make importable.
IMPORTS = {
    "executorch": "executorch.runtime, torchao",
    "litert": "litert_torch, ai_edge_litert.interpreter",
    "openvino": "openvino, nncf",
    "quant": "torchao",
    "elpv": "elpv_dataset",
    "docs": "mkdocs, mkdocstrings",
}


def run(command: list[str], log: Path) -> bool:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode == 0


def check(scenario: str, folder: Path) -> str:
    """'ok', or what went wrong first; the whole log is left in ``folder``."""
    env = folder / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    pip, python, log = env / "bin" / "pip", env / "bin" / "python", folder / "log.txt"
    for extra in scenario.split(","):
        if extra not in IMPORTS:
            raise SystemExit(f"unknown extra {extra!r}; known: {', '.join(IMPORTS)}")
        if not run([str(pip), "install", "-q", "torch==2.13.0", "-e", f"{ROOT}[{extra}]"], log):
            return f"pip install [{extra}] failed (see {log})"
        if not run([str(pip), "check"], log):
            return f"pip check failed after [{extra}] (see {log})"
        if not run([str(python), "-c", f"import {IMPORTS[extra]}"], log):
            return f"[{extra}] does not import (see {log})"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=SCENARIOS)
    parser.add_argument("--keep", type=Path, help="a folder to keep the environments and logs in")
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for i, scenario in enumerate(args.scenarios):
            folder = base / f"{i}-{scenario.replace(',', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            verdict = check(scenario, folder)
            failed += verdict != "ok"
            print(f"{scenario}: {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
