"""Transforms: resizing, normalisation and the seeded augmentations.

One resize function (:func:`resize_center_crop`) serves the test split, :func:`eval_transform`
(predict, export) and the augmentations, so the same source image gives the same pixels
whichever path it takes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from mobilenets.errors import MobileNetError

# torchvision's and timm's ImageNet statistics: image folders are normalised with them (and
# imported ImageNet weights expect them), so a run fine-tuned from ImageNet sees familiar inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet practice: resize the shorter side to resolution * 256 / 224, then centre-crop.
IMAGENET_CROP_PCT = 224 / 256

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


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


def random_flips_tilt(
    image: torch.Tensor, generator: torch.Generator | None = None, degrees: float = 3.0
) -> torch.Tensor:
    """Inspection images' augmentation: a horizontal and a vertical flip, each half of the
    time, a quarter turn half of the time on square images (with the flips, each of a
    square's 8 symmetries equally often: a solar cell is a cell turned or mirrored), and a
    tilt of up to ``degrees`` with a scaling within 2%. Nothing is cropped away: a solar
    cell's defect may sit at its border, and a crop that removed it would make the label
    wrong."""
    r = torch.rand(3, generator=generator).tolist()
    if r[0] < 0.5:
        image = image.flip(-1)
    if r[1] < 0.5:
        image = image.flip(-2)
    if r[2] < 0.5 and image.shape[-1] == image.shape[-2]:
        image = image.transpose(-1, -2).flip(-1)  # a quarter turn
    return random_affine(image, generator, degrees=degrees, translate=0.0, scale=(0.98, 1.02))


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
