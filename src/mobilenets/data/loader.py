"""The seeded sampler and the one way the package makes a DataLoader."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SeededSampler(Sampler):
    """Yields ``(index, seed)`` pairs for the datasets of
    :mod:`mobilenets.data.datasets`: the order and every item's
    augmentation seed come from one generator seeded by (seed, epoch), in the main process.

    So an epoch's batches are a function of the seed and the epoch number alone, the same with
    0 or 2 workers, and a resumed run that calls ``set_epoch(epoch)`` gets the batches the
    uninterrupted run had. Seeds are drawn per dataset index, not per position, so an image's
    augmentation in an epoch does not depend on how a ``DistributedSampler`` shards the data.
    The epoch advances by one each time iteration starts. ``sampler`` (e.g. a
    ``DistributedSampler``, or a ``range``) supplies the indices instead of ``shuffle``;
    ``set_epoch`` reaches it.
    """

    def __init__(
        self, length: int, shuffle: bool, seed: int, sampler: Iterable[int] | None = None
    ) -> None:
        self.length, self.shuffle, self.seed, self.sampler = length, shuffle, seed, sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) if self.sampler is not None else self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        seeds = torch.randint(2**62, (self.length,), generator=generator).tolist()
        if self.sampler is not None:
            indices = list(self.sampler)
        elif self.shuffle:
            indices = torch.randperm(self.length, generator=generator).tolist()
        else:
            indices = range(self.length)
        self.set_epoch(self.epoch + 1)
        return iter([(i, seeds[i]) for i in indices])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int | None = None,
    sampler: Iterable[int] | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """``make_loader(dataset, batch_size, shuffle, seed, num_workers=None, sampler=None,
    drop_last=False)``: a DataLoader whose order and augmentation are reproducible from
    ``seed`` (through :class:`SeededSampler`, reachable as ``loader.sampler``; call
    ``loader.sampler.set_epoch(epoch)`` before an epoch to reproduce it on resume).

    ``num_workers=None`` picks 0 for in-memory datasets (digits, CIFAR: a worker process costs
    more than indexing a tensor) and 2 persistent workers for image folders (decoding is the
    bottleneck there; this machine class has 2 cores). ``sampler`` (e.g. a
    ``DistributedSampler``) supplies the indices instead of ``shuffle``.
    """
    if num_workers is None:
        num_workers = 0 if getattr(dataset, "in_memory", True) else min(2, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), shuffle, seed, sampler),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
