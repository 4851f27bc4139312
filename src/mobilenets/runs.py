"""Run directories: a model's weights, the typed record of what the run is, and its data.

A run directory holds::

    model.safetensors   the state dict, nothing executable
    model.json          the run record (:class:`RunInfo`): the architecture (model name and
                        constructor keywords), the classes, the preprocessing (mean, std,
                        input size, crop), what the run was trained on (:class:`DataRecord`)
                        or imported from (:class:`ImportRecord`), epoch and metrics

The record is versioned. Version 1 (the first release) kept what a run was trained on in an
untyped ``extra`` dictionary; version 2 has typed fields. Version 1 directories still load:
:meth:`RunInfo.from_json` reads both and always writes version 2.

Loading a run's data lives here too (:func:`load_run_data`): evaluation, export checks and
int8 calibration all rebuild the held-out split a run was tested on from its record.

Every file is written atomically (:mod:`mobilenets.io`), the weights before the record, so a
record on disk always belongs to complete weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from mobilenets.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VAL_FRACTION,
    DataBundle,
    Renormalized,
    load_data,
)
from mobilenets.errors import MobileNetError
from mobilenets.io import atomic_path, atomic_write_json
from mobilenets.models import create_model

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "mobilenets-run"
FORMAT_VERSION = 2


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class DataRecord:
    """What a run was trained on: enough to rebuild its held-out split image for image."""

    source: str | None  # None or "digits": the embedded digits; else an absolute directory
    name: str  # "digits", "cifar10", "cifar100", "imagefolder"
    split_seed: int = 0
    val_fraction: float = VAL_FRACTION
    # Share of the resized image the evaluation centre crop keeps (1.0: the whole image).
    crop_pct: float = 1.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataRecord:
        return cls(
            source=data.get("source"),
            name=str(data.get("name", "")),
            split_seed=int(data.get("split_seed", 0)),
            val_fraction=float(data.get("val_fraction", VAL_FRACTION)),
            crop_pct=float(data.get("crop_pct", 1.0)),
        )


@dataclass(frozen=True)
class ImportRecord:
    """Where imported weights came from: a torchvision or timm checkpoint file."""

    file: str
    source: str  # "torchvision" or "timm"


@dataclass
class RunInfo:
    """Everything beside the weights that a run directory records."""

    model: str
    model_kwargs: dict[str, Any]
    class_names: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 224, 224)  # (channels, height, width)
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data: DataRecord | None = None  # None: weights not trained here (imported)
    imported_from: ImportRecord | None = None
    # The training recipe (``TrainConfig.recipe()``), reused on resume; None: not trained here.
    train_config: dict[str, Any] | None = None
    finished: bool = False  # every epoch of train_config ran
    world_size: int = 1  # training processes
    # SHA-256 of every replica's final weights (torchrun): equal digests, one model.
    replica_sha256: list[str] | None = None
    # Where the weights training started from came from (``train --init``): the run or file,
    # its model, the data it was trained on and, for an imported run, the checkpoint file
    # (``imported_from``), down the chain of runs fine-tuned from each other. None: random.
    init_from: dict[str, Any] | None = None

    @property
    def resolution(self) -> int:
        return int(self.input_size[1])

    @property
    def crop_pct(self) -> float:
        """The evaluation crop the run was tested with (1.0 when it records no data)."""
        return 1.0 if self.data is None else self.data.crop_pct

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "epoch": self.epoch,
            "metrics": self.metrics,
            "data": None if self.data is None else vars(self.data).copy(),
            "imported_from": None if self.imported_from is None else vars(self.imported_from),
            "train_config": self.train_config,
            "finished": self.finished,
            "world_size": self.world_size,
            "replica_sha256": self.replica_sha256,
            "init_from": self.init_from,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> RunInfo:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MobileNetError(f"{source} is not a mobilenets run description")
        version = data.get("version", 1)
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise MobileNetError(
                f"{source} is run format version {version}; this mobilenets reads versions "
                f"1 to {FORMAT_VERSION} (upgrade mobilenets)"
            )
        try:
            fields = _fields_v1(data) if version == 1 else data
            data_record, imported = fields.get("data"), fields.get("imported_from")
            return cls(
                model=data["model"],
                model_kwargs=dict(data.get("model_kwargs", {})),
                class_names=list(data["class_names"]),
                mean=tuple(data.get("mean", IMAGENET_MEAN)),
                std=tuple(data.get("std", IMAGENET_STD)),
                input_size=tuple(data.get("input_size", (3, 224, 224))),
                epoch=data.get("epoch"),
                metrics=dict(data.get("metrics", {})),
                data=None if data_record is None else DataRecord.from_json(data_record),
                imported_from=None if imported is None else ImportRecord(**imported),
                train_config=fields.get("train_config"),
                finished=bool(fields.get("finished", False)),
                world_size=int(fields.get("world_size", 1)),
                replica_sha256=fields.get("replica_sha256"),
                init_from=data.get("init_from"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MobileNetError(f"{source} is missing or has a malformed field: {e}") from None

    def describe(self) -> str:
        """The model in words for a report's header: ``mobilenet_v2 (width 0.5, 10 classes,
        32 px)``, not the raw keyword dictionary."""
        width = self.model_kwargs.get("width_mult")
        parts = [] if width is None else [f"width {width:g}"]
        parts += [f"{len(self.class_names)} classes", f"{self.resolution} px"]
        return f"{self.model} ({', '.join(parts)})"

    def build_model(self) -> nn.Module:
        """A freshly initialised model of this run's architecture."""
        return create_model(self.model, **self.model_kwargs)


def _fields_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the training record in ``extra``: the same keys, one level down."""
    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        raise TypeError("extra is not an object")
    return extra


# --------------------------------------------------------------------------- files


def save_run(run_dir: str | os.PathLike[str], model: nn.Module, info: RunInfo) -> Path:
    """Write ``model``'s weights and ``info`` into ``run_dir`` (created if needed), atomically.

    The weights are written before the description, so a description on disk always belongs
    to complete weights. A failed write (full disk, read-only directory) raises one line and
    leaves the previous files as they were.
    """
    run_dir = Path(run_dir)
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    # The bytes are written by Python, so a full disk raises the OSError atomic_path reports.
    data = save(state, metadata={"format": FORMAT, "model": info.model})
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(data)
    atomic_write_json(run_dir / META_FILE, info.to_json())
    return run_dir


def read_run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read a run directory's description, with one-line errors for every way it can be wrong."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MobileNetError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise MobileNetError(f"{run_dir} is not a directory (expected a run directory)")
    meta = run_dir / META_FILE
    if not meta.is_file():
        raise MobileNetError(f"{run_dir} is not a complete run: {META_FILE} is missing")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MobileNetError(f"{meta} is not valid JSON: {e}") from None
    return RunInfo.from_json(data, str(meta))


def names_a_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, given where a run directory or an exported program may go
    (``evaluate``, ``predict``), names a file: one that exists, or a missing path with a
    suffix (``model.int8.tflite``), so that a missing program is called one."""
    path = Path(path)
    return path.is_file() or (not path.is_dir() and bool(path.suffix))


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise MobileNetError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MobileNetError(f"{path} is not a readable safetensors file: {e}") from None


def load_weights_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> None:
    """Load ``state`` into ``model``, naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    # In network order (the model's own), so "first" is the earliest layer that differs.
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    problems = []
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatch(es), first {k}: "
            f"file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    if strict and missing:
        problems.append(f"{len(missing)} tensor(s) missing, first {missing[0]}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), first {unexpected[0]}")
    if problems:
        raise MobileNetError(f"weights in {source} do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)


def load_run(
    run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, RunInfo]:
    """Rebuild the model of a run directory with its weights, in eval mode."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise MobileNetError(f"{run_dir} is not a complete run: {WEIGHTS_FILE} is missing")
    model = info.build_model()
    load_weights_into(model, load_state_dict_file(weights), str(weights))
    return model.to(map_location).eval(), info


# --------------------------------------------------------------------------- the run's data


def load_run_data(info: RunInfo, data: str | os.PathLike[str] | None = None) -> DataBundle:
    """The data a run was trained on, rebuilt from its record, without augmentation.

    ``data`` replaces the recorded source (a dataset moved since training, or images for a run
    whose weights were imported). The split is the run's own (same seed and fraction), so
    "held-out" means held out from training. The classes must be the model's; images come out
    in the model's normalisation (``mean``/``std`` of the bundle are the run's), whatever
    statistics the data has itself. Evaluation, export checks and int8 calibration all read
    data through here.
    """
    if data is None and info.data is None:
        raise MobileNetError(
            "this run records no training data (imported weights?); pass --data with images "
            "of its classes"
        )
    record = info.data or DataRecord(source=None, name="")
    source = record.source if data is None else str(data)
    bundle = load_data(
        source,
        resolution=info.resolution,
        seed=record.split_seed,
        val_fraction=record.val_fraction,
        augment=False,
    )
    _check_compatible(bundle.class_names, bundle.input_size, info, source)
    if (tuple(bundle.mean), tuple(bundle.std)) == (tuple(info.mean), tuple(info.std)):
        return bundle

    def renormalized(dataset: torch.utils.data.Dataset | None):
        if dataset is None:
            return None
        return Renormalized(dataset, bundle.mean, bundle.std, info.mean, info.std)

    return replace(
        bundle,
        test=renormalized(bundle.test),
        train_raw=renormalized(bundle.train_raw),
        mean=tuple(info.mean),
        std=tuple(info.std),
    )


def _check_compatible(
    class_names: Sequence[str], input_size: Sequence[int], info: RunInfo, source: object
) -> None:
    what = "the embedded digits" if source is None else str(source)
    if list(class_names) != list(info.class_names):
        raise MobileNetError(
            f"{what} has classes {_short(class_names)} but the model was trained on "
            f"{_short(info.class_names)}"
        )
    if input_size[0] != info.input_size[0]:
        raise MobileNetError(
            f"{what} has {input_size[0]}-channel images but the model takes {info.input_size[0]}"
        )


def _short(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"
