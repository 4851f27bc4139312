"""The seeded sampler and the one way the package makes a DataLoader."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


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


class FoldedBatchSampler(BatchSampler):
    """Batches of ``batch_size`` with the last, partial batch kept, except that a last batch
    of a single item joins the one before it.

    Training in BatchNorm's train mode needs more than one value per channel: a lone image at
    the end of an epoch can fail (a 1x1 feature map) or normalise with the statistics of one
    image. Folding it into the previous batch uses every image and never trains on one alone
    (unless the whole data set is one image).
    """

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)

    def __len__(self) -> int:
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        if full == 0:
            return 1 if n else 0
        return full + (rest > 1)

    def __iter__(self) -> Iterator[list]:
        batches = list(super().__iter__())
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2].extend(batches.pop())
        return iter(batches)


# Below this many images a folder loads in the training process: starting a worker (a new
# process importing torch) costs more than the decoding it would take over.
WORKERS_FROM_IMAGES = 512


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int | None = None,
    sampler: Iterable[int] | None = None,
    drop_last: bool = False,
    fold_single: bool = False,
) -> DataLoader:
    """``make_loader(dataset, batch_size, shuffle, seed, num_workers=None, sampler=None,
    drop_last=False, fold_single=False)``: a DataLoader whose order and augmentation are
    reproducible from ``seed`` (through :class:`SeededSampler`, reachable as
    ``loader.batch_sampler.sampler``, and as ``loader.sampler`` without ``fold_single``; call
    its ``set_epoch(epoch)`` before an epoch to reproduce it on resume).

    ``num_workers=None`` picks 0 for in-memory datasets (digits, CIFAR: a worker process costs
    more than indexing a tensor) and for folders of fewer than :data:`WORKERS_FROM_IMAGES`
    images (a worker starts by importing torch, which costs more than decoding a few hundred
    images), and 2 persistent workers for larger image folders (decoding is the bottleneck
    there; this machine class has 2 cores). ``sampler`` (e.g. a
    ``DistributedSampler``) supplies the indices instead of ``shuffle``. ``fold_single``
    keeps the last partial batch but never a batch of one image (:class:`FoldedBatchSampler`).
    The seeded sampler is ``loader.batch_sampler.sampler`` either way. A dataset with a
    ``collate_fn`` (detection: each image has its own number of boxes) batches with it.

    Workers start from a fork server, not by forking this process: a process that has loaded
    a runtime with threads of its own (LiteRT's JAX, OpenVINO's TBB, ExecuTorch's pool) can
    crash in fork, and Python 3.14 makes the same choice by default.
    """
    if num_workers is None:
        small = len(dataset) < WORKERS_FROM_IMAGES
        in_memory = getattr(dataset, "in_memory", True)
        num_workers = 0 if in_memory or small else min(2, os.cpu_count() or 1)
    seeded = SeededSampler(len(dataset), shuffle, seed, sampler)
    batching: dict = (
        {"batch_sampler": FoldedBatchSampler(seeded, batch_size)}
        if fold_single
        else {"batch_size": batch_size, "sampler": seeded, "drop_last": drop_last}
    )
    return DataLoader(
        dataset,
        **batching,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate_fn", None),
        persistent_workers=num_workers > 0,
        multiprocessing_context=_worker_start() if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def stop_workers(*loaders: DataLoader) -> None:
    """Stop the worker processes of ``loaders`` now (loaders without workers are left as
    they are).

    A loader with persistent workers keeps them until it is freed. When it is freed by the
    garbage collector (a loader held in a reference cycle), its iterator stops the workers
    from inside the collection, where each worker is joined only after its timeout:
    seconds per worker, paid by whatever code happened to trigger the collection. Stopped
    here, they exit at once. This reads DataLoader's private ``_iterator``, as PyTorch
    Lightning does for the same reason: DataLoader has no public way to stop its workers.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


def _worker_start() -> str:
    """``forkserver`` where the platform has it (Linux), else its default (``spawn``)."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else methods[0]
