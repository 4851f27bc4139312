"""``mobilenets <command>``: parses arguments and calls one library function per command.

Each command group lives in its own module with a ``register(subparsers)`` function; add a
module name to ``COMMAND_MODULES`` to add its commands. A :class:`MobileNetError` from the
library becomes one ``error: ...`` line on stderr and exit status 2, never a traceback; a
warning is one ``warning: ...`` line. With no command, the help is printed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
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
        description="MobileNets (V1-V4), EfficientNet and their dense heads: costs, training, "
        "int8, evaluation and deployment to four runtimes.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=ArgumentParser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"mobilenets.cli.{name}").register(subparsers)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as users read them: one ``warning: ...`` line, no source location."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mobilenets`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `mobilenets` alone: say what it can do
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        # Ours are one line each; libraries' deprecation and runtime notices are for their callers,
        # not for someone running a command. Restored on return, so callers keep theirs.
        warnings.showwarning = show_warning
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. JAX's os.fork() notice (LiteRT)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error is one ``error:`` line and exit status 2."""
    try:
        return int(args.func(args) or 0)
    except MobileNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # A training run says how to continue (mobilenets.train.loop.RunInterrupted).
        detail = f"; {e}" if str(e) else ""
        print(f"error: interrupted{detail}", file=sys.stderr)
        return 130
