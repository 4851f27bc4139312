"""How long ``mobilenets --version``, ``--help`` and ``python -m mobilenets`` (no command: the
help) take to start, in fresh processes, interleaved so load changes hit all three alike.

The CLI imports heavy libraries (torch, onnx, matplotlib, rich) only inside the command that
needs them, so these should cost an interpreter start plus argparse, not torch's import (the
issue that asked for this measured 2.8 s before the CLI became lazy). Also counts the modules
imported, and checks torch is not among them. Writes benchmarks/results/cli_startup.md::

    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stamp import write_results

COMMANDS = {
    "mobilenets --version": ["-m", "mobilenets", "--version"],
    "mobilenets --help": ["-m", "mobilenets", "--help"],
    "python -m mobilenets": ["-m", "mobilenets"],
}
ROUNDS = 7
CHECK = "import sys, runpy; sys.argv = ['mobilenets', '--help']\ntry:\n"
CHECK += "    runpy.run_module('mobilenets', run_name='__main__')\nexcept SystemExit:\n"
CHECK += "    pass\nprint(len(sys.modules), 'torch' in sys.modules, file=sys.stderr)"


def main() -> None:
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(ROUNDS):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    modules, torch_loaded = done.stderr.split()[-2:]
    load = os.getloadavg()[0]
    lines = [
        "# CLI start-up",
        "",
        f"`benchmarks/cli_startup.py`, {ROUNDS} fresh processes each, interleaved; "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end (other agents' jobs "
        "were running on the same cores: read the numbers as upper bounds).",
        "",
        "| command | median s | min s |",
        "|---|---:|---:|",
        *(
            f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f} |"
            for name, t in seconds.items()
        ),
        "",
        f"`--help` imports {modules} modules; torch among them: {torch_loaded}.",
        "",
    ]
    out = Path(__file__).parent / "results" / "cli_startup.md"
    write_results(out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
