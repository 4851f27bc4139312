"""What every deployment format provides, and how its file is judged against PyTorch.

A format (ONNX, ExecuTorch, LiteRT, OpenVINO) is a :class:`Target`: a runtime check that
names the pip extra to install, a writer (fp32, or int8 calibrated on given images), and a
loader that runs the written file in the runtime that ships it. :mod:`mobilenets.deploy.export`
drives them all the same way, and :mod:`mobilenets.deploy.bench` times them side by side.

The check compares logits on held-out images. fp32 must agree to ``FP32_TOLERANCE`` relative
to the largest logit (a file that computes something else must never ship); int8 is judged
by top-1 agreement with PyTorch's fp32 model and the logits' signal-to-quantization-noise
ratio, ``10 log10(sum z^2 / sum (z - z_int8)^2)`` dB, the measure Krishnamoorthi (2018) and
the runtimes' own quantization tools report. An int8 file agreeing on fewer than
``MIN_INT8_AGREEMENT`` of the images is broken, not approximate, and is refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.errors import MobileNetError

FP32_TOLERANCE = 1e-4
MIN_INT8_AGREEMENT = 0.5

# A loaded program: a batch of preprocessed images (N, C, H, W) float32 -> logits (N, classes).
# Every runner takes any array layout (strided views, Fortran order) and float dtype; see
# :func:`input_array`.
Runner = Callable[[np.ndarray], np.ndarray]


def input_array(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """``images`` as a C-contiguous float32 array, copied only where it is not one already.

    The runtimes read an input's raw buffer: ExecuTorch took the CHW crops of
    ``np.asarray(img).transpose(2, 0, 1)`` (a strided view of HWC pixels) as if they were laid
    out contiguously and returned wrong logits without a word; every runner passes its input
    through here first.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


@dataclass(frozen=True)
class Capabilities:
    """What a format's writer can do beyond fp32 and plain int8, declared as data: the pipeline
    and the workflows read these, and a writer takes the matching keyword only where one is
    true."""

    mixed_precision: bool = True  # ``fp32_modules``: named layers kept in float in an int8 file
    wide_residuals: bool = False  # ``wide_residuals``: the residual sums kept wider than int8
    lowers_pt2e: bool = False  # writes a graph that already holds quantize/dequantize pairs
    #                            (PT2E's ``convert_pt2e``), so a QAT graph's ranges can ship
    observer: bool = False  # ``observer="minmax"``: activation ranges min-max (after AdaRound)
    float_file: bool = False  # ``float_file``: quantizes a float file written once beforehand
    fixed_batch: bool = False  # the program takes exactly the example's batch size
    # the format's own keywords: ``write`` takes these (ONNX: ``opset`` and onnxruntime's
    # quantizer choices), ``load`` these (ONNX: ``provider``); the pipeline refuses any other
    write_options: tuple[str, ...] = ()
    load_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """What a writer writes: ``model`` (BatchNorm already folded, eval mode); ``example``, a
    batch whose shape the program takes (formats without a dynamic batch axis fix it);
    ``calibration``, None for fp32, else the batches of training images int8 ranges are
    measured on; ``metadata``, the run's description the program carries."""

    model: nn.Module
    example: torch.Tensor
    calibration: list[torch.Tensor] | None
    metadata: dict[str, str]


@dataclass(frozen=True)
class Target:
    """One deployment format and the runtime that runs it.

    ``writer(job, path, **options)`` writes a :class:`Job` to ``path`` (:meth:`write` takes
    its parts); ``load(path, threads, **load_options)`` returns a :data:`Runner` on the
    format's own runtime. ``modules`` are the importable packages the runtime needs, ``extra``
    the pip extra that installs them; ``can`` says what else its writer does
    (:class:`Capabilities`).
    """

    name: str
    suffix: str  # of the main file: ".onnx", ".pte", ".tflite", ".xml"
    extra: str
    modules: tuple[str, ...]
    runtime: str  # the runtime's name, as the check's message says it
    writer: Callable[..., None]  # (job, path, **options)
    load: Callable[..., Runner]  # (path, threads, **load_options)
    sidecars: tuple[str, ...] = ()  # other files beside the main one (".bin" for OpenVINO IR)
    quantization: str = ""  # how int8 is made, for the run's record
    # post-training int8 equalizes channels first unless told otherwise: the XNNPACK formats,
    # whose activations are symmetric int8 (a ReLU6 output uses half the levels, and a small
    # channel few of them); there it lost less accuracy on labelled data, where onnxruntime's
    # and OpenVINO's asymmetric activations lost more with it
    # (benchmarks/results/int8_labels_equalize.md)
    equalize: bool = False
    # The format has no place for free-form properties: ``write`` puts the metadata in
    # ``<file>.json`` beside the program (:func:`write_metadata_file`), one of its files
    metadata_file: bool = False
    can: Capabilities = Capabilities()
    # one line for format options that cannot work together, before anything is written
    check_options: Callable[[dict[str, object]], None] | None = None

    def write(
        self,
        model: nn.Module,
        path: str | os.PathLike[str],
        example: torch.Tensor,
        calibration: list[torch.Tensor] | None,
        metadata: dict[str, str],
        **options: object,
    ) -> None:
        """Write ``model`` (int8 when ``calibration`` is given) to ``path``, with the
        writer's ``options`` (``fp32_modules``, ``wide_residuals``, the format's own)."""
        self.writer(Job(model, example, calibration, metadata), Path(path), **options)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def require(self) -> Target:
        """This target, or one line naming the extra that installs its runtime."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise MobileNetError(
                f"{self.name} export needs {_named(missing)}, "
                f"{'which is' if len(missing) == 1 else 'which are'} not installed here "
                f'(install it with pip install "mobilenets[{self.extra}]")'
            )
        return self

    def files(self, path: str | os.PathLike[str]) -> list[Path]:
        """The main file and its sidecars (its weights, its metadata file), which move with it."""
        path = Path(path)
        extra = [metadata_path(path)] if self.metadata_file else []
        return [path, *(path.with_suffix(s) for s in self.sidecars), *extra]


def metadata_path(path: str | os.PathLike[str]) -> Path:
    """``model.int8.pte`` -> ``model.int8.pte.json``: where a program whose format holds no
    free-form properties keeps its metadata."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_metadata_file(path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    """Write ``metadata`` (the same keys an ONNX file's ``metadata_props`` hold) beside the
    program at ``path``. The writer writes into a staging folder, and the export renames every
    file of the program atomically, this one before the program itself."""
    metadata_path(path).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")


def read_metadata_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata written beside the program at ``path``; empty when there is none."""
    meta = metadata_path(path)
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MobileNetError(f"{meta} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise MobileNetError(f"{meta} is not a mobilenets metadata file")
    return data


@dataclass
class Agreement:
    """How closely a runtime's outputs follow PyTorch's on the checked images.

    For a classifier ``top1_agreement`` is the share of images whose highest logit is the same
    class; for a segmenter the share of pixels whose class is the same (``measure`` "pixels");
    for a detector the share of PyTorch's decoded detections the runtime's match (same class,
    IoU >= 0.5; ``measure`` "detections"), with the matched boxes' mean IoU and mean score
    difference (:mod:`mobilenets.deploy.heads`).
    """

    images: int
    max_rel_error: float  # max |runtime - PyTorch| / max |PyTorch|, over the raw outputs
    top1_agreement: float
    sqnr_db: float  # 10 log10(signal / error) over all raw outputs
    measure: str = "top-1"
    box_iou: float | None = None
    score_difference: float | None = None

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "images": self.images,
            "max_rel_error": self.max_rel_error,
            "top1_agreement": self.top1_agreement,
            "sqnr_db": self.sqnr_db,
        }
        if self.measure != "top-1":
            data["measure"] = self.measure
        for key in ("box_iou", "score_difference"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


# compares PyTorch's outputs (first) with a runtime's (second)
Compare = Callable[[np.ndarray, np.ndarray], Agreement]


def agreement(expected: np.ndarray, got: np.ndarray) -> Agreement:
    """Compare two (N, classes) logit arrays."""
    if got.shape != expected.shape:
        raise MobileNetError(
            f"the runtime's output has shape {got.shape}, PyTorch's {expected.shape}"
        )
    expected, got = expected.astype(np.float64), got.astype(np.float64)
    error = got - expected
    noise = float((error**2).sum())
    signal = float((expected**2).sum())
    return Agreement(
        images=len(expected),
        max_rel_error=float(np.abs(error).max() / max(np.abs(expected).max(), 1e-12)),
        top1_agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        sqnr_db=float("inf") if noise == 0 else float(10 * np.log10(signal / noise)),
    )


def pytorch_logits(model: nn.Module, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    """``model``'s logits for every image in ``inputs`` (a list of batches), without grad:
    the reference a runtime's or a quantized model's output is compared with."""
    with torch.no_grad():
        return torch.cat([model(images) for images in inputs]).numpy()


def run_batches(runner: Runner, inputs: Sequence[torch.Tensor], batch: int | None) -> np.ndarray:
    """Logits of every image in ``inputs`` (a list of batches); ``batch`` re-slices them for a
    program that takes a fixed batch size."""
    outputs = []
    for images in inputs:
        array = input_array(images)
        step = len(array) if batch is None else batch
        if batch is not None and len(array) % batch:
            raise MobileNetError(f"{len(array)} images do not split into batches of {batch}")
        outputs.extend(runner(array[i : i + step]) for i in range(0, len(array), step))
    return np.concatenate(outputs)


def check_program(
    target: Target,
    path: Path,
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    int8: bool,
    example_batch: int,
    load_options: dict[str, object] | None = None,
    tolerance: float | None = None,
    compare: Compare | None = None,
) -> Agreement:
    """Run ``path`` in its runtime (loaded with the format's ``load_options``) and ``model`` in
    PyTorch on ``inputs``, compared by ``compare`` (default :func:`agreement`); refuse a file
    whose fp32 outputs differ by more than ``tolerance`` or whose int8 top-1 (pixels,
    detections) mostly disagrees."""
    tolerance = FP32_TOLERANCE if tolerance is None else tolerance
    runner = target.load(path, None, **(load_options or {}))
    expected = pytorch_logits(model, inputs)
    got = run_batches(runner, inputs, example_batch if target.can.fixed_batch else None)
    result = (compare or agreement)(expected, got)
    if not int8 and not result.max_rel_error <= tolerance:
        raise MobileNetError(
            f"the {target.name} program differs from PyTorch by {result.max_rel_error:.2e} "
            f"(relative to the largest logit) in {target.runtime}, more than "
            f"{tolerance:.0e}: not writing {path.name}"
        )
    if int8 and not result.top1_agreement >= MIN_INT8_AGREEMENT:
        raise MobileNetError(
            f"the int8 {target.name} program agrees with PyTorch on only "
            f"{result.top1_agreement:.0%} of {result.measure} on {result.images} images in "
            f"{target.runtime} "
            f"(SQNR {result.sqnr_db:.1f} dB): not writing {path.name}"
        )
    return result


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The runtimes' chatter off while they import, convert and load.

    Python warnings, log records up to WARNING, and the lines their C++ cores print straight
    to file descriptor 2 (ExecuTorch's cpuinfo probe, torchao's optional CUDA kernels, absl):
    none of it is about the user's model, and a command's output must be its result or one
    line of error. Failures still reach the user, as the exception the caller words.
    """
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        logging.disable(disabled)


def first_line(error: BaseException) -> str:
    """An exception's first line, for a one-line message about a runtime's failure."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _named(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
