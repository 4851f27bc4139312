"""Arguments several commands take, worded once so every command's help says the same."""

from __future__ import annotations

import argparse


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    """The positional run directory a command reads."""
    parser.add_argument("run_dir", help="a run directory (model.safetensors + model.json)")


def add_moved_data(parser: argparse.ArgumentParser) -> None:
    """``--data``: where the run's data is now, when it is no longer where the run says."""
    parser.add_argument("--data", help="the run's data, if it moved (default: as the run records)")


def add_int8_steps(parser: argparse.ArgumentParser, lead: str = "") -> None:
    """``--equalize``/``--no-equalize``, ``--bias-correct``, ``--adaround [STEPS]``: the float
    steps before post-training int8 (``mobilenets.int8.prepare``); ``lead`` starts each help
    line."""
    parser.add_argument(
        "--equalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{lead}rescale channels first so each activation's int8 range is shared fairly "
        "(same function in float; on by default for executorch and litert)",
    )
    parser.add_argument(
        "--bias-correct",
        action="store_true",
        help=f"{lead}correct each layer's bias for the mean shift int8 gives its output "
        "(measured in simulated int8 on the calibration images)",
    )
    parser.add_argument(
        "--adaround",
        nargs="?",
        type=int,
        const=True,
        default=False,
        metavar="STEPS",
        help=f"{lead}round each weight up or down as its layer's output needs (AdaRound, "
        "STEPS optimisation steps per layer, a few hundred by default; minutes for a 224 px "
        "model)",
    )
