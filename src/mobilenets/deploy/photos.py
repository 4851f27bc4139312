"""Real photographs to check and calibrate ImageNet models on, from wheels already installed.

An imported ImageNet model (torchvision's MobileNetV2, say) records no data set, and the
digits say nothing about how a 1000-class model quantizes: its activations' ranges come from
photographs. Three libraries ship a few public-domain photographs inside their wheels:
scikit-learn (``china.jpg``, ``flower.jpg``; a dependency of ours), matplotlib
(``grace_hopper.jpg``; a dependency) and scikit-image (``skimage/data``: astronaut, chelsea,
coffee, ...; the ``test`` extra installs it). Random resized crops and flips of those eleven
make as many distinct inputs as a check needs; different seeds keep the calibration crops apart
from the evaluation crops.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilenets.data import RandomResizedCropFlip, load_image
from mobilenets.errors import MobileNetError

# (package, path inside it): photographs, not drawings, test patterns or micrographs.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
)
CALIBRATION_SEED = 0
EVALUATION_SEED = 1
# Crops from a quarter of the photo to all of it: objects stay recognisable, as in the
# evaluation crops of an ImageNet validation image.
CROP_SCALE = (0.25, 1.0)


def _package_dir(package: str) -> Path | None:
    """Where ``package`` is installed, found without importing it (scikit-image is slow to
    import and optional)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photo_path(name: str) -> Path:
    """The installed file of one photograph, by its file name (``coffee.png``)."""
    for package, relative in PHOTOS:
        if Path(relative).name == name:
            root = _package_dir(package)
            if root is None or not (root / relative).is_file():
                raise MobileNetError(
                    f"{name} ships with {package}, which is not installed here "
                    '(pip install "mobilenets[test]")'
                )
            return root / relative
    raise MobileNetError(f"no bundled photo {name!r}; known: {', '.join(photo_names())}")


def photo_names() -> list[str]:
    return [Path(relative).name for _, relative in PHOTOS]


def photo_paths() -> list[Path]:
    """Every bundled photograph that is installed here (scikit-image's only with it)."""
    paths = []
    for package, relative in PHOTOS:
        root = _package_dir(package)
        if root is not None and (root / relative).is_file():
            paths.append(root / relative)
    return paths


def photo_crops(
    n: int,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = EVALUATION_SEED,
    paths: Sequence[Path] | None = None,
) -> torch.Tensor:
    """``n`` normalised random crops (N, 3, size, size), cycling through the photos in turn,
    each crop of random area and aspect ratio, flipped half of the time; seeded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MobileNetError(f"the number of photo crops must be a positive integer, got {n!r}")
    paths = photo_paths() if paths is None else list(paths)
    if not paths:
        raise MobileNetError("no bundled photographs are installed (pip install scikit-learn)")
    images = [load_image(p) for p in paths]
    crop = RandomResizedCropFlip(size, mean, std, scale=CROP_SCALE)
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([crop(images[i % len(images)], generator) for i in range(n)])
