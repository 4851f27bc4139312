"""The sources (embedded digits, CIFAR python batch files read by a safe unpickler, image
folders, the elpv solar cells of an optional package) and :func:`load_data`, which picks one;
see :mod:`mobilenets.data`."""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mobilenets.data.datasets import ImageFolderDataset, TensorImageDataset
from mobilenets.data.splits import VAL_FRACTION, stratified_split
from mobilenets.data.transforms import (
    IMAGENET_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    RandomResizedCropFlip,
    channel_stats,
    load_image,
    random_affine,
    random_crop_flip,
    random_flips_tilt,
    resize_center_crop,
)
from mobilenets.errors import MobileNetError

MIN_RESOLUTION = 8
DEFAULT_RESOLUTION = {
    "digits": 32,
    "cifar10": 32,
    "cifar100": 32,
    "imagefolder": 224,
    "elpv": 224,
}
# Data named rather than found on disk (a folder of that name is given as ./name).
NAMED_SOURCES = ("digits", "elpv", "elpv4")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


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


def read_labels_csv(path: Path) -> dict[str, list[Path]]:
    """``{label: its image files}`` of a CSV with a header naming the columns ``file`` and
    ``label`` (others are ignored); a relative file is relative to the CSV's folder. Files
    that do not exist are one line naming how many and the first."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise MobileNetError(
                    f"{path} needs a header with the columns file and label, got "
                    f"{reader.fieldnames}"
                )
            rows = [(r["file"], r["label"]) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MobileNetError(f"cannot read {path}: {e}") from None
    if not rows:
        raise MobileNetError(f"{path} lists no images")
    classes: dict[str, list[Path]] = {}
    missing = []
    for line, (file, label) in enumerate(rows, start=2):
        if not file or not label or not label.strip():
            raise MobileNetError(f"{path}, line {line}: a file and a label are needed")
        image = (path.parent / file).expanduser()
        if not image.is_file():
            missing.append(f"{file} (line {line})")
        classes.setdefault(label.strip(), []).append(image)
    if missing:
        raise MobileNetError(
            f"{path} names {len(missing)} file(s) that do not exist, first: {missing[0]}"
        )
    return dict(sorted(classes.items()))


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
    else:  # one list split by val_fraction: a CSV of (file, label), or a folder per class
        classes = read_labels_csv(root) if root.is_file() else _class_folders(root)
        class_index = {name: i for i, name in enumerate(classes)}
        samples = _readable(classes, class_index, skipped)
        train_idx, test_idx = stratified_split(
            np.array([label for _, label in samples]), val_fraction, seed
        )
        train, test = [samples[i] for i in train_idx], [samples[i] for i in test_idx]
        if not test:
            more = "more rows" if root.is_file() else "images or a train/ and val/ layout"
            raise MobileNetError(
                f"{root}: every class has a single image, none is left to hold out; add {more}"
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


# --------------------------------------------------------------------------- elpv

# Deitsch et al., "Automatic classification of defective photovoltaic module cells in
# electroluminescence images" (Solar Energy 2019, arXiv 1807.02894): 2,624 cells, 1,968 (75%)
# to train on and 656 to test on, stratified; a cell is defective when its defect probability
# is 0.5 or more (the two-class task its 88.42% and 82.44% accuracies are for).
ELPV_EXTRA = "elpv"
ELPV_CLASSES = ("functional", "defective")
# ``elpv4``: the paper's four classes, one per defect probability an expert gave a cell
ELPV_PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)
ELPV4_CLASSES = ("p=0", "p=1/3", "p=2/3", "p=1")
ELPV_TEST_IMAGES = 656
ELPV_LICENCE = "CC BY-NC-SA 4.0"


@dataclass(frozen=True)
class ElpvTable:
    """The elpv annotations, one entry per cell, in the package's order."""

    files: list[Path]  # 300 x 300 8-bit grey PNGs
    probabilities: np.ndarray  # defect probability: 0, 1/3, 2/3 or 1
    types: np.ndarray  # "mono" or "poly"

    @property
    def labels(self) -> np.ndarray:
        """1 (defective) where the defect probability is at least one half, else 0."""
        return (self.probabilities >= 0.5).astype(np.int64)

    @property
    def labels4(self) -> np.ndarray:
        """The index of each cell's defect probability in :data:`ELPV_PROBABILITIES`."""
        levels = np.asarray(ELPV_PROBABILITIES)
        return np.abs(self.probabilities[:, None] - levels[None]).argmin(1).astype(np.int64)

    def split(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Sorted indices (train, test) of the paper's protocol: 656 cells held out, the
        split stratified by defect probability and cell type together (8 groups), so both
        halves hold each group in the same proportion."""
        from sklearn.model_selection import train_test_split

        groups = np.array(
            [f"{p:.2f}/{t}" for p, t in zip(self.probabilities, self.types, strict=True)]
        )
        train, test = train_test_split(
            np.arange(len(groups)),
            test_size=ELPV_TEST_IMAGES,
            stratify=groups,
            random_state=seed,
        )
        return np.sort(train), np.sort(test)


def elpv_table() -> ElpvTable:
    """The annotations of the installed ``elpv-dataset`` package (its ``labels.csv``), or
    one line naming the extra that installs it."""
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise MobileNetError(
            "--data elpv needs the elpv-dataset package, which is not installed here "
            f'(install it with pip install "mobilenets[{ELPV_EXTRA}]"; its images are '
            f"{ELPV_LICENCE}, non-commercial use)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    try:
        rows = [line.split() for line in (root / "labels.csv").read_text().splitlines()]
        rows = [r for r in rows if r]
        files = [root / r[0] for r in rows]
        probabilities = np.array([float(r[1]) for r in rows])
        types = np.array([r[2] for r in rows])
    except (OSError, IndexError, ValueError) as e:
        raise MobileNetError(f"cannot read the elpv annotations in {root}: {e}") from None
    if not rows or len(files) != len(types):
        raise MobileNetError(f"the elpv annotations in {root} are empty or malformed")
    return ElpvTable(files, probabilities, types)


def _load_elpv(resolution: int, seed: int, augment: bool, four: bool = False) -> DataBundle:
    """The elpv cells at ``resolution`` px: grey images replicated to 3 channels and
    normalised with ImageNet's statistics, as ImageNet weights expect; the whole cell is
    resized (no centre crop: a crack at the border is a defect too). Two classes (the
    paper's functional / defective), or with ``four`` its four defect probabilities; the
    same split either way."""
    table = elpv_table()
    pixels = np.stack([np.asarray(to_grey(load_image(f))) for f in table.files])
    images = torch.from_numpy(pixels)[:, None]  # uint8 (N, 1, 300, 300): 236 MB
    labels = torch.from_numpy(table.labels4 if four else table.labels)
    train_idx, test_idx = table.split(seed)
    train_x, test_x = images[train_idx], images[test_idx]
    train_y, test_y = labels[train_idx], labels[test_idx]
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    return DataBundle(
        train=TensorImageDataset(
            train_x,
            train_y,
            resolution,
            mean,
            std,
            random_flips_tilt if augment else None,
            resize_first=True,
        ),
        test=TensorImageDataset(test_x, test_y, resolution, mean, std),
        class_names=list(ELPV4_CLASSES if four else ELPV_CLASSES),
        mean=mean,
        std=std,
        input_size=(3, resolution, resolution),
        name="elpv4" if four else "elpv",
        train_raw=TensorImageDataset(train_x, train_y, resolution, mean, std),
    )


def to_grey(img: Any) -> Any:
    return img if img.mode == "L" else img.convert("L")


# --------------------------------------------------------------------------- entry point


def load_data(
    data: str | os.PathLike[str] | None = None,
    resolution: int | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    augment: bool = True,
) -> DataBundle:
    """Load the embedded digits (``None`` or ``"digits"``), the elpv solar cells (``"elpv"``,
    from the ``elpv-dataset`` package, split as its paper did, functional or defective;
    ``"elpv4"``, the same cells in its four defect probabilities), a CIFAR-10/100 directory of
    python batch files, or an image folder; see the module docstring for each.

    ``resolution`` defaults to 32 for the digits and CIFAR and 224 for elpv and image
    folders.
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
    if str(data) in ("elpv", "elpv4"):  # its own split, the paper's (a folder: ./elpv)
        return _load_elpv(pick("elpv"), seed, augment, four=str(data) == "elpv4")
    root = Path(data).expanduser()
    if not root.exists():
        raise MobileNetError(
            f"data not found: {root} (expected 'digits', 'elpv', 'elpv4', a CIFAR directory or an "
            "image folder)"
        )
    if root.is_file() and root.suffix.lower() == ".csv":
        return _load_image_folder(root, pick("imagefolder"), seed, val_fraction, augment)
    if not root.is_dir():
        raise MobileNetError(f"data must be a directory or a .csv of file,label: {root}")
    if not any(root.iterdir()):
        raise MobileNetError(f"data directory is empty: {root}")
    cifar = _cifar_format(root)
    if cifar is not None:
        folder, fmt = cifar
        return _load_cifar(folder, fmt, pick(fmt.name), augment)
    return _load_image_folder(root, pick("imagefolder"), seed, val_fraction, augment)
