"""Datasets and transforms: the embedded digits, image folders and CIFAR batch files.

``load_data(data, resolution, seed)`` returns a :class:`DataBundle`: a train split (augmented),
a test split (evaluation transform), the class names and the normalisation that goes into the
checkpoint. ``eval_transform`` is the single-image preprocessing that predict and export use;
it gives exactly the pixels the test split gets for the same source image, because both go
through one resize function (:func:`resize_center_crop`).

Three sources:

- ``None`` or ``"digits"``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images,
  10 classes, nothing downloaded), split 80/20 by a seeded stratified split, resized once as a
  whole tensor, replicated to 3 channels, normalised with the train split's mean/std.
- a directory of CIFAR-10/100 python batch files, read with an unpickler that refuses every
  global except the few numpy needs to rebuild an array (the files are pickles; a pickle can
  name any callable, so an unrestricted load would run whatever a file asks).
- any other directory: an image folder ``root/<class>/<image>``, either with ``train/`` and
  ``val/`` subfolders or one folder split by ``val_fraction``. Every image is fully decoded
  once when the folder is loaded; unreadable or truncated files are **skipped**, counted and
  reported in one :class:`SkippedImagesWarning` (and listed in ``DataBundle.skipped``), so one
  broken file in a scraped folder does not stop a run, and none fails mid-epoch.

Randomness: splits are a function of ``seed`` alone (numpy generator). Augmentation draws from
a ``torch.Generator`` seeded per item by :class:`SeededSampler` (which :func:`make_loader`
installs), so an epoch's batches depend only on (seed, epoch), whatever the number of workers;
indexing a dataset with a plain integer draws from torch's global RNG instead.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from mobilenets.errors import MobileNetError

MIN_RESOLUTION = 8
DEFAULT_RESOLUTION = {"digits": 32, "cifar10": 32, "cifar100": 32, "imagefolder": 224}
# ImageNet practice: resize the shorter side to resolution * 256 / 224, then centre-crop.
# torchvision's and timm's ImageNet statistics: image folders are normalised with them (and
# imported ImageNet weights expect them), so a run fine-tuned from ImageNet sees familiar inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_PCT = 224 / 256
# Share of the digits or of a split-less image folder held out for testing (seeded, stratified).
VAL_FRACTION = 0.2
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


class SkippedImagesWarning(UserWarning):
    """Some files of an image folder could not be decoded and were left out."""


@dataclass
class DataBundle:
    """Both splits of a dataset and what a model trained on it must remember."""

    train: Dataset  # items: (normalised float tensor C x H x W, int label), augmented
    test: Dataset  # held-out split, evaluation transform
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    input_size: tuple[int, int, int]  # (C, H, W) the model is fed
    name: str  # "digits", "cifar10", "cifar100", "imagefolder"
    # The train split's items with the evaluation transform: for calibration and train accuracy.
    train_raw: Dataset | None = None
    # Share of the resized image the evaluation centre crop keeps (1.0: the whole image is
    # resized to the input size). Store it with the run and pass it to eval_transform so
    # predict sees what the test split saw.
    crop_pct: float = 1.0
    skipped: list[str] = field(default_factory=list)  # unreadable files left out


# --------------------------------------------------------------------------- transforms


def resize_center_crop(images: torch.Tensor, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Resize float images (..., C, H, W) so the shorter side is ``floor(size / crop_pct)``,
    then centre-crop ``size`` x ``size``.

    The one resize of the package: in-memory datasets call it on the whole tensor once,
    ``eval_transform`` on one image, so both produce the same pixels. Bilinear with
    antialiasing, so large photos are averaged rather than sampled when shrunk.
    """
    h, w = images.shape[-2:]
    short = math.floor(size / crop_pct)
    new_h, new_w = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    if (new_h, new_w) != (h, w):
        flat = images.reshape(-1, *images.shape[-3:])
        flat = F.interpolate(
            flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        images = flat.reshape(*images.shape[:-2], new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, for (..., C, H, W) tensors."""
    m = torch.tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images - m) / s


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``"RGB"`` or ``"L"``; transparent pixels are composited onto white first
    (a plain convert would expose whatever colour happens to be stored under them)."""
    if img.mode == mode:
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert(mode)


def pil_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as a float (C, H, W) tensor in [0, 1], as RGB (3 channels) or L (1)."""
    array = np.array(to_mode(img, "L" if channels == 1 else "RGB"), dtype=np.uint8)
    return to_float(torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float in [0, 1]; float tensors pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class EvalTransform:
    """PIL image -> normalised tensor: to RGB or L, resize + centre crop, normalise.

    A class rather than a closure so datasets holding it pickle into DataLoader workers.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int],
        crop_pct: float = 1.0,
    ) -> None:
        channels, height, width = (int(v) for v in input_size)
        if height != width:
            raise MobileNetError(f"input size must be square, got {height}x{width}")
        if not 0.0 < crop_pct <= 1.0:
            raise MobileNetError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if len(mean) != channels or len(std) != channels:
            raise MobileNetError(f"mean and std need {channels} values, got {mean} and {std}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels, self.size, self.crop_pct = channels, height, crop_pct

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = resize_center_crop(pil_to_tensor(img, self.channels), self.size, self.crop_pct)
        return normalize(x, self.mean, self.std)


def eval_transform(
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    crop_pct: float = 1.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing predict, export and quantize use for a single image.

    It reproduces the test split: ``crop_pct`` is ``DataBundle.crop_pct`` (1.0, the default,
    for the digits and CIFAR, whose whole image is resized, so a digits-trained model sees a
    PNG of a digit as it saw the test split; ``224 / 256`` for image folders).
    """
    return EvalTransform(mean, std, input_size, crop_pct)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, so a truncated file fails here and not later; a photo's
    EXIF orientation is applied, so the model sees it the way a viewer shows it."""
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise MobileNetError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MobileNetError(f"cannot read image {path}: {e}") from None


# --------------------------------------------------------------------------- augmentation


def random_affine(
    image: torch.Tensor,
    generator: torch.Generator | None = None,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """A small random rotation, scaling and shift of a (C, H, W) image in [0, 1]; zeros (the
    digits' background) come in at the borders. No flips: a mirrored 2 is not a 2."""
    r = torch.rand(4, generator=generator).tolist()
    angle = math.radians((2 * r[0] - 1) * degrees)
    zoom = scale[0] + (scale[1] - scale[0]) * r[1]
    # affine_grid's coordinates span [-1, 1]: a shift of `translate` of the width is 2x that.
    tx, ty = ((2 * r[2] - 1) * 2 * translate, (2 * r[3] - 1) * 2 * translate)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=image.dtype)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, align_corners=False, padding_mode="zeros")[0]


def random_crop_flip(
    image: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4
) -> torch.Tensor:
    """CIFAR's augmentation: pad with zeros, crop back to size at a random offset, flip
    horizontally half of the time."""
    h, w = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    crop = padded[..., top : top + h, left : left + w]
    return crop.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop


class RandomResizedCropFlip:
    """Image folders' augmentation: a random crop of random area and aspect ratio, resized to
    ``size``, flipped horizontally half of the time, normalised.

    The smallest crop is a quarter of the image rather than Inception's 8%: the MobileNet
    paper trains with fewer distortions, small models having less trouble overfitting.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.scale, self.ratio = scale, ratio

    def crop_box(
        self, width: int, height: int, generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a crop, as torchvision's RandomResizedCrop picks it:
        ten tries at a random area and log-uniform aspect ratio, else the largest centre crop
        within the ratio bounds."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            r = torch.rand(4, generator=generator).tolist()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * r[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r[1])
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(r[2] * (width - w + 1)), int(r[3] * (height - h + 1))
                return left, top, left + w, top + h
        w, h = width, height
        if width / height < self.ratio[0]:
            h = round(width / self.ratio[0])
        elif width / height > self.ratio[1]:
            w = round(height * self.ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        x = pil_to_tensor(img.crop(self.crop_box(*img.size, generator)))
        x = F.interpolate(
            x[None], (self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if torch.rand(1, generator=generator).item() < 0.5:
            x = x.flip(-1)
        return normalize(x, self.mean, self.std)


# --------------------------------------------------------------------------- datasets


def _unpack_key(key: int | tuple[int, int]) -> tuple[int, torch.Generator | None]:
    """``index`` -> (index, None: global RNG); ``(index, seed)`` -> (index, seeded generator)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor (N, C, H, W), uint8 or float in [0, 1].

    Per item: to float, ``augment`` (train split only), resize to ``size`` if the tensor is
    not already there, replicate a single channel to ``len(mean)``, normalise. Items can be
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
    ) -> None:
        self.images, self.labels, self.size = images, labels, size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, generator = _unpack_key(key)
        x = to_float(self.images[index])
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


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (train, val) of a seeded split that keeps ``round(n * val_fraction)``
    of every class's n items for validation (at least one, and at least one for training,
    where the class has two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise MobileNetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of (N, C, H, W) images in [0, 1] units, accumulated in float64
    over chunks so 50,000 CIFAR images never become one float copy."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = to_float(images[start : start + chunk]).double()
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


# --------------------------------------------------------------------------- digits


def _load_digits(resolution: int, seed: int, val_fraction: float, augment: bool) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    # 4-bit intensities 0..16 -> [0, 1]; one whole-tensor resize, eval_transform's path.
    # Stored with one channel (a third of the memory: 360 MB at 224 px) and replicated to
    # three per item, as eval_transform's conversion of a grayscale image to RGB does.
    pixels = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]
    pixels = resize_center_crop(pixels, resolution)
    train_idx, test_idx = stratified_split(labels, val_fraction, seed)
    train_x, test_x = pixels[train_idx], pixels[test_idx]
    train_y, test_y = torch.from_numpy(labels[train_idx]), torch.from_numpy(labels[test_idx])
    (mean,), (std,) = channel_stats(train_x)
    mean, std = (mean,) * 3, (std,) * 3
    return DataBundle(
        train=TensorImageDataset(
            train_x, train_y, resolution, mean, std, random_affine if augment else None
        ),
        test=TensorImageDataset(test_x, test_y, resolution, mean, std),
        class_names=[str(c) for c in digits.target_names],
        mean=mean,
        std=std,
        input_size=(3, resolution, resolution),
        name="digits",
        train_raw=TensorImageDataset(train_x, train_y, resolution, mean, std),
    )


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarFormat:
    name: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str


CIFAR10 = _CifarFormat(
    "cifar10", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "label_names", "labels",
)  # fmt: skip
CIFAR100 = _CifarFormat("cifar100", ("train",), "test", "meta", "fine_label_names", "fine_labels")


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, and only that use of it."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode("latin1")


# The globals a pickled ndarray names (protocols 2 to 5, numpy 1 and 2 module paths); the
# functions are taken from numpy's own __reduce__, which finds them in either version.
# Anything else a file names is refused.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_bytes,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR file as a dict with str keys (the originals are Python 2 pickles: bytes)."""
    try:
        with open(path, "rb") as f:
            obj = _PlainDataUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise MobileNetError(f"CIFAR file missing: {path}") from None
    except Exception as e:  # a corrupt pickle can raise almost anything; the file is the cause
        raise MobileNetError(f"cannot read CIFAR file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise MobileNetError(f"{path} is not a CIFAR file: expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_batch(
    path: Path, labels_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of one batch file, checked."""
    batch = _read_pickle(path)
    data = batch.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2) or (
        data.shape[1] != 3 * 32 * 32
    ):
        raise MobileNetError(f"{path}: 'data' must be a uint8 array of N x 3072 pixels")
    try:
        labels = np.asarray(batch.get(labels_key, ()))
    except ValueError:  # a ragged list
        labels = np.empty((0, 0))
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise MobileNetError(f"{path}: '{labels_key}' must hold one integer label per image")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise MobileNetError(f"{path}: labels must be in [0, {num_classes})")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(labels.astype(np.int64))


def _cifar_format(root: Path) -> tuple[Path, _CifarFormat] | None:
    """The CIFAR format of ``root`` (or of the folder the official archive extracts to)."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (folder / "batches.meta").is_file() or (folder / "data_batch_1").is_file():
            return folder, CIFAR10
        if (folder / "meta").is_file() and (folder / "train").is_file():
            return folder, CIFAR100
    return None


def _load_cifar(root: Path, fmt: _CifarFormat, resolution: int, augment: bool) -> DataBundle:
    names = _read_pickle(root / fmt.meta_file).get(fmt.names_key)
    if not isinstance(names, list) or not names:
        raise MobileNetError(f"{root / fmt.meta_file}: no '{fmt.names_key}' list")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = [_read_cifar_batch(root / f, fmt.labels_key, len(names)) for f in fmt.train_files]
    train_x, train_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    test_x, test_y = _read_cifar_batch(root / fmt.test_file, fmt.labels_key, len(names))
    mean, std = channel_stats(train_x)
    return DataBundle(
        train=TensorImageDataset(
            train_x, train_y, resolution, mean, std, random_crop_flip if augment else None
        ),
        test=TensorImageDataset(test_x, test_y, resolution, mean, std),
        class_names=class_names,
        mean=mean,
        std=std,
        input_size=(3, resolution, resolution),
        name=fmt.name,
        train_raw=TensorImageDataset(train_x, train_y, resolution, mean, std),
    )


# --------------------------------------------------------------------------- image folders


def _is_image_file(path: Path) -> bool:
    # Hidden files are left out: macOS' "._photo.jpg" resource forks are not images.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: its image files}`` for ``root/<class>/**/<image>``, sorted."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise MobileNetError(f"no class folders in {root}: expected {root}/<class>/<image>")
    classes = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if _is_image_file(p))
        if not files:
            raise MobileNetError(f"class folder has no images: {folder}")
        classes[folder.name] = files
    return classes


def _readable(
    classes: dict[str, list[Path]], class_index: dict[str, int], skipped: list[str]
) -> list[tuple[str, int]]:
    """(path, label) of the images that decode; the others are appended to ``skipped``."""
    samples = []
    for name, files in classes.items():
        kept = 0
        for path in files:
            try:
                load_image(path)
            except MobileNetError as e:
                skipped.append(str(e))
                continue
            samples.append((str(path), class_index[name]))
            kept += 1
        if not kept:
            folder = files[0].parent
            raise MobileNetError(f"class folder has no readable images: {folder} ({skipped[-1]})")
    return samples


def _load_image_folder(
    root: Path, resolution: int, seed: int, val_fraction: float, augment: bool
) -> DataBundle:
    skipped: list[str] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_classes, val_classes = _class_folders(root / "train"), _class_folders(root / "val")
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise MobileNetError(f"classes in {root / 'val'} missing from train/: {unknown}")
        class_index = {name: i for i, name in enumerate(train_classes)}
        train = _readable(train_classes, class_index, skipped)
        test = _readable(val_classes, class_index, skipped)
    else:
        classes = _class_folders(root)
        class_index = {name: i for i, name in enumerate(classes)}
        samples = _readable(classes, class_index, skipped)
        train_idx, test_idx = stratified_split(
            np.array([label for _, label in samples]), val_fraction, seed
        )
        train, test = [samples[i] for i in train_idx], [samples[i] for i in test_idx]
        if not test:
            raise MobileNetError(
                f"{root}: every class has a single image, none is left to hold out; "
                "add images or a train/ and val/ layout"
            )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) under {root}; first: {skipped[0]}",
            SkippedImagesWarning,
            stacklevel=3,
        )
    input_size = (3, resolution, resolution)
    evaluate = EvalTransform(IMAGENET_MEAN, IMAGENET_STD, input_size, IMAGENET_CROP_PCT)
    train_augment = RandomResizedCropFlip(resolution, IMAGENET_MEAN, IMAGENET_STD)
    return DataBundle(
        train=ImageFolderDataset(train, evaluate, train_augment if augment else None),
        test=ImageFolderDataset(test, evaluate),
        class_names=list(class_index),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=input_size,
        name="imagefolder",
        train_raw=ImageFolderDataset(train, evaluate),
        crop_pct=IMAGENET_CROP_PCT,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- entry point


def load_data(
    data: str | os.PathLike[str] | None = None,
    resolution: int | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    augment: bool = True,
) -> DataBundle:
    """Load the embedded digits (``None`` or ``"digits"``), a CIFAR-10/100 directory of python
    batch files, or an image folder; see the module docstring for each.

    ``resolution`` defaults to 32 for the digits and CIFAR and 224 for image folders.
    ``val_fraction`` and ``seed`` make the held-out split of the digits and of an image folder
    without ``train/``/``val/``; CIFAR has its own test batch. ``augment=False`` gives the
    train split the evaluation transform. Mistakes (a missing path, an empty folder, a class
    folder without images, a corrupt or unsafe CIFAR file, a resolution below 8) raise
    :class:`MobileNetError`.
    """

    def pick(name: str) -> int:
        res = DEFAULT_RESOLUTION[name] if resolution is None else resolution
        if isinstance(res, bool) or not isinstance(res, int) or res < MIN_RESOLUTION:
            raise MobileNetError(f"resolution must be an integer >= {MIN_RESOLUTION}, got {res}")
        return res

    if data is None or str(data) == "digits":
        return _load_digits(pick("digits"), seed, val_fraction, augment)
    root = Path(data).expanduser()
    if not root.exists():
        raise MobileNetError(
            f"data not found: {root} (expected 'digits', a CIFAR directory or an image folder)"
        )
    if not root.is_dir():
        raise MobileNetError(f"data must be a directory: {root}")
    if not any(root.iterdir()):
        raise MobileNetError(f"data directory is empty: {root}")
    cifar = _cifar_format(root)
    if cifar is not None:
        folder, fmt = cifar
        return _load_cifar(folder, fmt, pick(fmt.name), augment)
    return _load_image_folder(root, pick("imagefolder"), seed, val_fraction, augment)


# --------------------------------------------------------------------------- loaders


class SeededSampler(Sampler):
    """Yields ``(index, seed)`` pairs for the datasets above: the order and every item's
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
