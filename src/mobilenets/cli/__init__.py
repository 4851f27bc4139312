"""``mobilenets <command>``: parses arguments and calls one library function per command.

Each command group lives in its own module with a ``register(subparsers)`` function; add a
module name to ``COMMAND_MODULES`` to add its commands. A :class:`MobileNetError` from the
library becomes one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from mobilenets import __version__
from mobilenets.errors import MobileNetError

COMMAND_MODULES = (
    "info",
    "interop",
    "train",
    "deploy",
    "quant",
    "compare_conversion",
    "speedup",
    "latency",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mobilenets",
        description="MobileNet V1/V2: costs, training, evaluation and deployment.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=ArgumentParser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"mobilenets.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mobilenets`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MobileNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
