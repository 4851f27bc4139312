"""Run directories: a model's weights (safetensors) and what is needed to use them (JSON).

A run directory holds::

    model.safetensors   the state dict, nothing executable
    model.json          model name and constructor kwargs, class names, normalisation (mean,
                        std), input size, epoch, metrics and free-form extras

Every file is written atomically (a temporary name in the same directory, fsync, rename), so a
run killed mid-write leaves the previous complete file, never half of a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.models import create_model

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "mobilenets-run"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto it.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` whole or not at all."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["input_size"] = list(self.input_size)
        return {"format": FORMAT, "version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> RunInfo:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MobileNetError(f"{source} is not a mobilenets run description")
        try:
            return cls(
                model=data["model"],
                model_kwargs=dict(data.get("model_kwargs", {})),
                class_names=list(data["class_names"]),
                mean=tuple(data.get("mean", IMAGENET_MEAN)),
                std=tuple(data.get("std", IMAGENET_STD)),
                input_size=tuple(data.get("input_size", (3, 224, 224))),
                epoch=data.get("epoch"),
                metrics=dict(data.get("metrics", {})),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MobileNetError(f"{source} is missing or has a malformed field: {e}") from None

    def build_model(self) -> nn.Module:
        """A freshly initialised model of this run's architecture."""
        return create_model(self.model, **self.model_kwargs)


def save_run(run_dir: str | os.PathLike[str], model: nn.Module, info: RunInfo) -> Path:
    """Write ``model``'s weights and ``info`` into ``run_dir`` (created if needed), atomically.

    The weights are written before the description, so a description on disk always belongs
    to complete weights.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "model": info.model})
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
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
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
