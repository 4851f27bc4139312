"""In-memory datasets whose items can carry their own seeded generator (see
:class:`~mobilenets.data.loader.SeededSampler`), and a change of normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from mobilenets.data.transforms import (
    Augment,
    EvalTransform,
    RandomResizedCropFlip,
    load_image,
    normalize,
    resize_center_crop,
    to_float,
)


def _unpack_key(key: int | tuple[int, int]) -> tuple[int, torch.Generator | None]:
    """``index`` -> (index, None: global RNG); ``(index, seed)`` -> (index, seeded generator)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor (N, C, H, W), uint8 or float in [0, 1].

    Per item: to float, ``augment`` (train split only), resize to ``size`` if the tensor is
    not already there, replicate a single channel to ``len(mean)``, normalise;
    ``resize_first`` resizes before ``augment`` (elpv: its flips, quarter turns and tilt
    commute with the resize, and the tilt's resampling costs less at 224 px than at 300).
    Items can be
    indexed ``i`` (augmentation draws from torch's global RNG) or ``(i, seed)`` (it draws from
    a generator seeded with ``seed``).
    """

    in_memory = True  # make_loader: no worker processes, indexing a tensor is cheap

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        resize_first: bool = False,
    ) -> None:
        self.images, self.labels, self.size = images, labels, size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment, self.resize_first = augment, resize_first

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, generator = _unpack_key(key)
        x = to_float(self.images[index])
        if self.resize_first:
            x = resize_center_crop(x, self.size)
        if self.augment is not None:
            x = self.augment(x, generator)
        x = resize_center_crop(x, self.size).expand(len(self.mean), -1, -1)
        return normalize(x, self.mean, self.std), int(self.labels[index])


class ImageFolderDataset(Dataset):
    """Images decoded from disk per item: ``augment`` for the train split, else ``transform``."""

    in_memory = False  # make_loader: decode in worker processes

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: EvalTransform,
        augment: RandomResizedCropFlip | None = None,
    ) -> None:
        self.samples, self.transform, self.augment = list(samples), transform, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, generator = _unpack_key(key)
        path, label = self.samples[index]
        img = load_image(path)
        x = self.augment(img, generator) if self.augment is not None else self.transform(img)
        return x, label


class Renormalized(Dataset):
    """A dataset's images re-expressed in another normalisation: data normalised with its own
    statistics, fed to a model trained with other ones, must be seen as the model saw pixels.

    ``(x * std + mean - target_mean) / target_std``, per channel; keys pass through unchanged.
    """

    def __init__(
        self,
        dataset: Dataset,
        mean: Sequence[float],
        std: Sequence[float],
        target_mean: Sequence[float],
        target_std: Sequence[float],
    ) -> None:
        self.dataset = dataset
        mean, std, target_mean, target_std = (
            torch.tensor(v, dtype=torch.float32).view(-1, 1, 1)
            for v in (mean, std, target_mean, target_std)
        )
        self.scale = std / target_std
        self.shift = (mean - target_mean) / target_std
        self.in_memory = getattr(dataset, "in_memory", True)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        x, label = self.dataset[key]
        return x * self.scale + self.shift, label
