"""Reading a checkpoint file from another library safely: safetensors, or ``torch.load`` with
``weights_only=True`` (a pickle that needs more than tensors and plain containers is refused
before any of it runs), unwrapped from the containers and prefixes training scripts add.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch

from mobilenets.errors import MobileNetError
from mobilenets.runs import (
    load_state_dict_file,
)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format starts with a pickle protocol opcode
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a torchvision or timm checkpoint file, read without running its code.

    Accepts a bare state dict or one inside a training checkpoint (under ``state_dict``,
    ``model``, ...), with ``module.`` or ``_orig_mod.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise MobileNetError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        obj: Any = _torch_load(path)
    elif _looks_like_safetensors(head, path.stat().st_size):
        obj = load_state_dict_file(path)
    else:
        raise MobileNetError(
            f"{path} is not a checkpoint: neither a PyTorch file (.pth/.pt) nor safetensors"
        )
    return _strip_wrappers(_unwrap(obj, path), path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then '{'."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= size


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))
        if needed:
            raise MobileNetError(
                f"refusing {path}: it needs more than plain tensors to load ({needed[1]}); "
                "only weights-only checkpoints (a state_dict) and safetensors are read"
            ) from None
        raise MobileNetError(f"{path} is not a readable PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        reason = str(e).split(".")[0].strip() or type(e).__name__
        raise MobileNetError(f"{path} is truncated or corrupt: {reason}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside a training checkpoint's dictionary."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise MobileNetError(f"{path} holds no state dict (top-level keys: {keys or 'none'})")
        obj = obj[inner]
    if not isinstance(obj, dict):
        raise MobileNetError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_state_dict(obj: dict[Any, Any]) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_wrappers(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if not _is_state_dict(state):
        raise MobileNetError(f"{path} holds no state dict of tensors")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state
