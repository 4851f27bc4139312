"""Measure the activation memory a real forward pass holds at its peak.

The cost model (:mod:`mobilenets.analysis.cost`) predicts the peak from shapes; this module
measures it, so the two can be held against each other. PyTorch has no peak-memory counter for CPU,
and the profiler's allocator events on CPU come back unordered and partial, so we watch the tensors
themselves: a ``TorchDispatchMode`` sees every ATen operator a forward pass runs, records the
storage of every tensor it returns, and drops a storage as soon as its last reference is gone
(a weak reference to the storage expires). The sum over live storages just after each operator
is what the process holds for activations at that moment; its maximum is the peak. Scratch
space a kernel allocates and frees inside one operator (oneDNN workspaces) is not an
activation and is not counted.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mobilenets.errors import MobileNetError


class _LiveStorages(TorchDispatchMode):
    """Track the bytes of tensor storages alive after each operator, and their maximum."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = ignore  # storages that are not activations (parameters, buffers)
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.live and storage.data_ptr() not in self.ignore:
            self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())

    @property
    def current(self) -> int:
        return sum(nbytes for _, nbytes in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Storages freed since the last operator are gone before this one allocates.
        self.live = {ptr: v for ptr, v in self.live.items() if not v[0].expired()}
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.track(value)
        self.peak = max(self.peak, self.current)
        return out


def measure_peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of activation storage alive during one inference pass of ``model`` on ``x``.

    The input counts (the caller holds it throughout, as PyTorch does); parameters and buffers,
    and views of them such as a transposed weight, do not. The model runs in eval mode under
    ``torch.no_grad`` and is put back in its mode.
    """
    if not isinstance(model, nn.Module):
        raise MobileNetError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise MobileNetError(f"expected an input tensor, got {type(x).__name__}")
    was_training = model.training
    state = itertools.chain(model.parameters(), model.buffers())
    tracker = _LiveStorages(ignore={t.untyped_storage().data_ptr() for t in state})
    tracker.track(x)
    try:
        model.eval()
        with torch.no_grad(), tracker:
            model(x)
    finally:
        model.train(was_training)
    return tracker.peak
