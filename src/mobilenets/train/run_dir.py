"""The training run directory: naming a new one, telling a run apart from any other folder,
what continuing reads back (``train_state.pt``), the config a resumed run continues with, and
the metrics file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from mobilenets.data import NAMED_SOURCES
from mobilenets.errors import MobileNetError
from mobilenets.io import LOCK_FILE, atomic_path, atomic_write_text
from mobilenets.plots import save_figure, training_curves_figure
from mobilenets.runs import (
    META_FILE,
    WEIGHTS_FILE,
    load_state_dict_file,
    read_run_info,
)
from mobilenets.train.recipe import RUNTIME_FIELDS, TrainConfig

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def new_run_dir(config: TrainConfig) -> Path:
    """``config.out`` if given (it must not already hold a run), else the first free name of
    ``runs/<model>``, ``runs/<model>-2``, ... so a second run never overwrites the first. A
    directory another run has locked (started, nothing written yet) is not free either: two
    runs started at once without ``--out`` take two names."""
    if config.out is not None:
        out = Path(config.out)
        check_new_run_dir(out)
        return out
    base = Path("runs") / config.model
    out, n = base, 1
    while holds_run(out) or (out / LOCK_FILE).exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def check_new_run_dir(out: Path) -> None:
    if holds_run(out):
        raise MobileNetError(
            f"{out} already holds a run; continue it with --resume {out} or pick another --out"
        )


def holds_run(path: Path) -> bool:
    return (path / META_FILE).exists() or (path / STATE_FILE).exists()


def read_train_state(run_dir: Path) -> dict[str, Any]:
    """The state a run continues from; refuses a run whose weights or state are missing or
    unreadable (the published weights are checked too: a resumed run rewrites them)."""
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise MobileNetError(f"cannot resume {run_dir}: {WEIGHTS_FILE} is missing")
    try:
        load_state_dict_file(weights)
    except MobileNetError as e:
        raise MobileNetError(f"cannot resume {run_dir}: {e}") from None
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise MobileNetError(f"cannot resume {run_dir}: {STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file can fail in many ways
        raise MobileNetError(f"cannot resume {run_dir}: {path} is unreadable ({e})") from None


def resumed_config(config: TrainConfig, epochs_given: bool = False) -> TrainConfig:
    """The recipe recorded in the run ``config.resume``, with the caller's runtime fields.

    ``epochs_given``: the caller set ``config.epochs`` on purpose; a number larger than the
    recorded one extends the run (a finished run included), recomputing the schedule.
    """
    run_dir = Path(config.resume)
    defaults = TrainConfig().recipe()
    changed = [
        k
        for k, v in config.recipe().items()
        if v != defaults.get(k) and not (k == "epochs" and epochs_given)
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise MobileNetError(
            f"a resumed run keeps the settings it was started with; drop {flags} "
            "(only --epochs may grow)"
        )
    info = read_run_info(run_dir)
    recipe = info.train_config
    if not isinstance(recipe, dict):
        raise MobileNetError(f"cannot resume {run_dir}: it was not written by mobilenets train")
    recorded = int(recipe.get("epochs", 0))
    epochs = config.epochs if epochs_given and config.epochs is not None else recorded
    if epochs < recorded or (epochs_given and info.epoch is not None and epochs <= info.epoch):
        raise MobileNetError(
            f"cannot resume {run_dir} with --epochs {epochs}: it is at epoch {info.epoch} of "
            f"{recorded}; --epochs can only grow past both"
        )
    if info.finished and epochs == recorded:
        raise MobileNetError(
            f"{run_dir} is finished ({info.epoch} of {recorded} epochs); nothing to resume "
            f"(train longer with --resume {run_dir} --epochs N for N > {recorded}, or fine-tune "
            f"it with --init {run_dir})"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    runtime = {k: getattr(config, k) for k in RUNTIME_FIELDS}
    merged = TrainConfig(**{k: v for k, v in recipe.items() if k in known}, **runtime)
    merged.recipe_name = merged.recipe_name or "scratch"  # recorded before recipes had names
    merged.epochs = epochs
    merged.out = str(run_dir)
    return merged


def data_source(data: str | None) -> str | None:
    """The data as the run records it: a directory as an absolute path, so evaluating the run
    from another working directory finds the same files."""
    if data is None or data in NAMED_SOURCES:
        return data
    return str(Path(data).expanduser().resolve())


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """``train_state.pt``, atomically and through a Python file object, so that a full disk
    raises an OSError instead of leaving a truncated file behind (``torch.save`` to a path
    writes through its own C++ stream)."""
    with atomic_path(run_dir / STATE_FILE) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records ``metrics.jsonl`` holds (empty when no epoch has finished)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_metrics(run_dir: Path, history: list[dict[str, Any]], curves: bool = True) -> None:
    """``metrics.jsonl`` and (with ``curves``: a classification record) ``curves.png`` of
    ``history``."""
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in history))
    if curves:
        save_figure(training_curves_figure(history), run_dir / CURVES_FILE)
