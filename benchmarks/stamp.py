"""The stamp every results file carries: which commit, date, machine, library versions and
command made it. Every benchmark script writes its results through ``write_results``, which
puts the stamp under the file's title; ``tests/test_benchmarks.py`` fails on a results file
without one.

Results made by a ``mobilenets`` command rather than a script (``choose``, ``quantize-mixed``)
are stamped after the run, on the machine that ran it::

    python benchmarks/stamp.py benchmarks/results/choose_digits.md \\
        --command "mobilenets choose --latency-ms 2 --data digits --epochs 3"

Any field can be given by hand (``--commit``, ``--date``, ``--machine``, ``--versions``) for a
file whose run cannot be redone; a stamp already in the file is replaced.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mobilenets.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("commit", "date", "machine", "versions", "command")
# distributions whose versions decide a benchmark's numbers; the ones installed are named
PACKAGES = (
    "torch",
    "numpy",
    "onnxruntime",
    "openvino",
    "nncf",
    "executorch",
    "ai-edge-litert",
    "litert-torch",
    "torchao",
)
HEADER = ["| stamp | |", "|---|---|"]
FIELD_LINE = re.compile(r"^\| (commit|date|machine|versions|command) \| (.*) \|$")


def git_commit() -> str:
    """HEAD's hash, marked when the source tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks/*.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{head} (with uncommitted changes)" if dirty else head


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    text = f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def versions() -> str:
    found = [f"python {platform.python_version()}"]
    for name in ("mobilenets", *PACKAGES):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def this_command() -> str:
    """The command that runs this process, with the script's path relative to the repository."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return shlex.join(["python", *argv])


def stamp_fields(command: str | None = None, **given: str) -> dict[str, str]:
    """The stamp of a run on this machine, now; ``given`` fields replace the measured ones."""
    fields = {
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "command": command or this_command(),
    }
    fields.update({k: v for k, v in given.items() if v})
    return fields


def stamp_lines(fields: dict[str, str]) -> list[str]:
    def cell(key: str) -> str:
        value = fields[key].replace("|", "\\|")
        return f"`{value}`" if key in ("commit", "command") else value

    return [*HEADER, *(f"| {key} | {cell(key)} |" for key in FIELDS)]


def read_stamp(text: str) -> dict[str, str]:
    """The stamp's fields found in a results file's text (empty when it has none)."""
    lines = text.splitlines()
    if HEADER[0] not in lines:
        return {}
    fields = {}
    for line in lines[lines.index(HEADER[0]) + 2 :]:
        if not (m := FIELD_LINE.match(line)):
            break
        fields[m.group(1)] = m.group(2).strip()
    return fields


def with_stamp(text: str, fields: dict[str, str]) -> str:
    """``text`` with its stamp (if any) replaced by ``fields``, under the title line."""
    lines = text.splitlines()
    if HEADER[0] in lines:  # the old stamp: its header and the field lines under it
        start = end = lines.index(HEADER[0])
        while end + 1 < len(lines) and (
            lines[end + 1] == HEADER[1] or FIELD_LINE.match(lines[end + 1])
        ):
            end += 1
        del lines[start : end + 1]
    at = 1 if lines and lines[0].startswith("# ") else 0
    while at < len(lines) and not lines[at].strip():
        del lines[at]
    block = ["", *stamp_lines(fields), ""] if at else [*stamp_lines(fields), ""]
    return "\n".join([*lines[:at], *block, *lines[at:]]).rstrip("\n") + "\n"


def write_results(path: str | os.PathLike[str], text: str, command: str | None = None) -> None:
    """Write a results file with this run's stamp under its title (atomically)."""
    atomic_write_text(path, with_stamp(text, stamp_fields(command)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stamp a results file with the run that made it")
    parser.add_argument("file", type=Path)
    parser.add_argument("--command", required=True, help="the exact command that made the file")
    for name in ("commit", "date", "machine", "versions"):
        parser.add_argument(f"--{name}", help=f"the run's {name} (default: this machine, now)")
    args = parser.parse_args(argv)
    fields = stamp_fields(
        args.command,
        commit=args.commit,
        date=args.date,
        machine=args.machine,
        versions=args.versions,
    )
    atomic_write_text(args.file, with_stamp(args.file.read_text(), fields))
    print(f"stamped {args.file}")


if __name__ == "__main__":
    main()
