"""Arguments several commands take, worded once so every command's help says the same."""

from __future__ import annotations

import argparse


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    """The positional run directory a command reads."""
    parser.add_argument("run_dir", help="a run directory (model.safetensors + model.json)")


def add_moved_data(parser: argparse.ArgumentParser) -> None:
    """``--data``: where the run's data is now, when it is no longer where the run says."""
    parser.add_argument("--data", help="the run's data, if it moved (default: as the run records)")
