"""Datasets and transforms: the embedded digits, image folders and CIFAR batch files.

``load_data(data, resolution, seed)`` returns a :class:`DataBundle`: a train split (augmented),
a test split (evaluation transform), the class names and the normalisation that goes into the
checkpoint. ``eval_transform`` is the single-image preprocessing that predict and export use;
it gives exactly the pixels the test split gets for the same source image, because both go
through one resize function (:func:`resize_center_crop`).

The sources:

- ``None`` or ``"digits"``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images,
  10 classes, nothing downloaded), split 80/20 by a seeded stratified split, resized once as a
  whole tensor, replicated to 3 channels, normalised with the train split's mean/std.
- ``"elpv"``: the 2,624 electroluminescence images of solar cells (300x300 grey) that the
  optional ``elpv-dataset`` package installs (extra ``elpv``; the images are CC BY-NC-SA 4.0),
  labelled functional / defective (defect probability >= 0.5) and split as Deitsch et al.
  (2019) did: 656 cells held out, stratified by defect probability and cell type; grey
  replicated to 3 channels, ImageNet's mean and std, the whole cell resized (no centre crop);
  augmented with flips and a small tilt. ``"elpv4"``: the same cells and split in the
  paper's four classes, one per defect probability (0, 1/3, 2/3, 1).
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

from mobilenets.data.datasets import ImageFolderDataset, Renormalized, TensorImageDataset
from mobilenets.data.loader import SeededSampler, make_loader, stop_workers
from mobilenets.data.sources import (
    DEFAULT_RESOLUTION,
    IMAGE_EXTENSIONS,
    MIN_RESOLUTION,
    NAMED_SOURCES,
    DataBundle,
    ElpvTable,
    SkippedImagesWarning,
    elpv_table,
    load_data,
)
from mobilenets.data.splits import VAL_FRACTION, stratified_split
from mobilenets.data.transforms import (
    IMAGENET_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    RandomResizedCropFlip,
    channel_stats,
    eval_transform,
    load_image,
    resize_center_crop,
)

__all__ = [
    "DEFAULT_RESOLUTION",
    "IMAGENET_CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MIN_RESOLUTION",
    "NAMED_SOURCES",
    "VAL_FRACTION",
    "DataBundle",
    "ElpvTable",
    "EvalTransform",
    "ImageFolderDataset",
    "RandomResizedCropFlip",
    "Renormalized",
    "SeededSampler",
    "SkippedImagesWarning",
    "TensorImageDataset",
    "channel_stats",
    "elpv_table",
    "eval_transform",
    "load_data",
    "load_image",
    "make_loader",
    "resize_center_crop",
    "stop_workers",
    "stratified_split",
]
