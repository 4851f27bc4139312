"""``mobilenets export RUN --format onnx|executorch|litert|openvino [--int8]``: one path for all.

Every format goes the same way: fold BatchNorm, write the program (int8: calibrated on the
run's training images), run it in the runtime that ships it on held-out images next to
PyTorch, and only then give it its final name. The check's numbers (fp32: the largest logit
difference; int8: top-1 agreement and logit SQNR) are returned and recorded in the run's
``model.json`` under ``metrics["exports"]``, so a run says what each of its files was measured at.

An imported run (torchvision or timm ImageNet weights) records no data set: it is checked and
calibrated on random crops of the photographs bundled with installed wheels
(:mod:`mobilenets.deploy.photos`), the calibration crops drawn with another seed than the
checked ones.

This is the only export path: ``mobilenets quantize`` is ``export --format onnx --int8`` under
another name, and a format's own options (ONNX's ``opset``, ``provider`` and onnxruntime's
quantizer choices) pass through it as keywords its target declares
(:attr:`~mobilenets.deploy.target.Capabilities.write_options`, ``load_options``).
Detectors and segmenters go the same way (:mod:`mobilenets.deploy.heads`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.heads import comparison, graph_of
from mobilenets.deploy.images import VERIFY_IMAGES, calibration_inputs, held_out_inputs
from mobilenets.deploy.quantize import DEFAULT_CALIBRATE_METHOD
from mobilenets.deploy.runtime import onnx_metadata
from mobilenets.deploy.target import Agreement, Compare, Target, agreement, check_program
from mobilenets.deploy.targets import executorch, litert, openvino
from mobilenets.deploy.targets import onnx as onnx_target
from mobilenets.errors import MobileNetError
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.int8.prepare import Preparation, prepare_for_int8
from mobilenets.io import atomic_path, atomic_write_json
from mobilenets.models import check_resolution
from mobilenets.runs import META_FILE, RunInfo, load_run

FORMATS: dict[str, Target] = {
    "onnx": onnx_target.TARGET,
    "executorch": executorch.TARGET,
    "litert": litert.TARGET,
    "openvino": openvino.TARGET,
}


@dataclass
class ExportReport:
    """What one export wrote and how its runtime compared with PyTorch."""

    format: str
    precision: str  # "fp32" or "int8"
    path: Path
    files: list[Path]
    size_bytes: int
    runtime: str
    checked_on: str
    check: Agreement
    quantization: str | None = None
    calibration_images: int = 0
    calibrated_on: str | None = None
    equalization: str | None = None  # what equalize() rescaled before calibrating, if asked
    rounding: str | None = None  # what adaround() rounded before calibrating, if asked
    bias_correction: str | None = None  # what bias_correct() did before calibrating, if asked
    wide_residuals: bool = False  # residual sums kept wider than int8
    replaced: bool = False  # a file of that name was there before and is now this one
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "precision": self.precision,
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "size_bytes": self.size_bytes,
            "runtime": self.runtime,
            "checked_on": self.checked_on,
            **self.check.to_dict(),
            **self.extra,
            "quantization": self.quantization,
            "calibration_images": self.calibration_images,
            "calibrated_on": self.calibrated_on,
            "equalization": self.equalization,
            "rounding": self.rounding,
            "bias_correction": self.bias_correction,
            "wide_residuals": self.wide_residuals,
            "replaced": self.replaced,
            "seconds": self.seconds,
        }


def target_of(fmt: str) -> Target:
    """The target called ``fmt``, its runtime installed, or one line saying what to do."""
    if fmt not in FORMATS:
        raise MobileNetError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt].require()


# The name each post-training step adds to a default int8 file name, in this order, where it
# differs from the format's default (equalization is some formats' default: Target.equalize).
STEP_NAMES = {
    "equalize": "equalized",
    "no_equalize": "unequalized",
    "adaround": "adaround",
    "bias_correct": "biascorrected",
    "wide_residuals": "wide",
}


# The flag of each format option, for messages; the int8-only ones, and the name a choice
# other than the default adds to a default int8 file name.
OPTION_FLAGS = {
    "opset": "--opset",
    "provider": "--provider",
    "per_channel": "--per-tensor",
    "quant_format": "--quant-format",
    "fp32_depthwise": "--fp32-depthwise",
    "calibrate_method": "--calibrate-method",
}
INT8_OPTIONS = ("per_channel", "quant_format", "fp32_depthwise", "calibrate_method")


def option_names(options: dict[str, object]) -> list[str]:
    """``per_channel=False, calibrate_method="percentile"`` -> ``["pertensor", "percentile"]``."""
    names = ["pertensor"] if options.get("per_channel") is False else []
    names += ["fp32dw"] if options.get("fp32_depthwise") else []
    for key, default in (("quant_format", "qdq"), ("calibrate_method", DEFAULT_CALIBRATE_METHOD)):
        if options.get(key, default) != default:
            names.append(str(options[key]))
    return names


def split_options(
    target: Target, int8: bool, options: dict[str, object], wide_residuals: bool = False
) -> tuple[dict[str, object], dict[str, object]]:
    """The format options asked for (None: not asked), as the writer's and the loader's
    keywords; one line for an option the format does not take or an int8 choice without
    ``int8``."""
    asked = {k: v for k, v in options.items() if v is not None}
    for key in asked:
        flag = OPTION_FLAGS.get(key, key)
        if key not in (*target.can.write_options, *target.can.load_options):
            raise MobileNetError(f"{flag} is not an option of {target.name} export")
        if key in INT8_OPTIONS and not int8:
            raise MobileNetError(f"{flag} is a choice of post-training int8: use it with --int8")
    if target.check_options is not None:
        target.check_options({**asked, "wide_residuals": wide_residuals})
    write = {k: v for k, v in asked.items() if k in target.can.write_options}
    return write, {k: v for k, v in asked.items() if k in target.can.load_options}


def default_path(
    run_dir: str | os.PathLike[str],
    target: Target,
    int8: bool,
    steps: Sequence[str] = (),
    options: dict[str, object] | None = None,
) -> Path:
    """``RUN_DIR/model.pte``, ``RUN_DIR/model.int8.pte``, and with post-training steps
    (keys of :data:`STEP_NAMES`) and format options other than the defaults their names:
    ``model.int8-equalized-wide.onnx``, ``model.int8-pertensor-percentile.onnx``. So files
    made with different steps sit side by side instead of replacing each other."""
    unknown = set(steps) - set(STEP_NAMES)
    if unknown:
        raise ValueError(f"unknown int8 steps {sorted(unknown)}")
    names = [name for step, name in STEP_NAMES.items() if step in steps]
    names += option_names(options or {})
    precision = "".join(f"-{n}" for n in names) if int8 else ""
    return Path(run_dir) / f"model{'.int8' + precision if int8 else ''}{target.suffix}"


def equalize_for(target: Target, equalize: bool | None) -> bool | None:
    """What :func:`~mobilenets.int8.prepare.prepare_for_int8` is asked for ``equalize`` (None:
    the format's default, :attr:`Target.equalize`): None there means wherever the network
    allows."""
    if equalize is None:
        return None if target.equalize else False
    return equalize


def asked_steps(
    target: Target,
    equalize: bool | None,
    adaround: bool | int,
    bias_correct: bool,
    wide_residuals: bool,
) -> dict[str, bool | int]:
    """Each of :data:`STEP_NAMES` -> whether it was asked, other than as ``target``'s default:
    ``--equalize`` where the format does not equalize by default, ``--no-equalize`` where it
    does."""
    changed = (equalize is True and not target.equalize, equalize is False and target.equalize)
    return dict(zip(STEP_NAMES, (*changed, adaround, bias_correct, wide_residuals), strict=True))


def int8_options(target: Target, adaround: bool | int, wide_residuals: bool) -> dict[str, object]:
    """The writer options an int8 file of ``target`` takes for what was asked.

    After AdaRound, min-max activation ranges where the writer would observe otherwise:
    AdaRound rounded each weight for those ranges (:mod:`mobilenets.int8.pt2e`). With
    ``wide_residuals``, the residual sums kept wider than int8, or one line where the format
    cannot (LiteRT's converter quantizes a float addition again).
    """
    options: dict[str, object] = {}
    if adaround and target.can.observer:
        options["observer"] = "minmax"
    if wide_residuals:
        if not target.can.wide_residuals:
            raise MobileNetError(
                f"{target.name} cannot keep the residual additions wider than int8 "
                "(its converter quantizes them again); leave out --wide-residuals"
            )
        options["wide_residuals"] = True
    return options


def check_asked(
    target: Target, out: Path, int8: bool, qat: bool, asked: dict[str, bool | int | None]
) -> None:
    """One line for an export that cannot be made as asked: a file name of another format, a
    QAT graph for a format that cannot lower one, a post-training step without ``--int8``."""
    if out.suffix != target.suffix:
        raise MobileNetError(f"a {target.name} file must end in {target.suffix}, got {out.name}")
    if qat and not (int8 and target.can.lowers_pt2e):
        raise MobileNetError(
            f"a QAT run's own int8 ranges ship only as an int8 program of a format that lowers "
            f"PT2E graphs (executorch), not as {'int8' if int8 else 'fp32'} "
            f"{target.name.lower()}"
        )
    post_training = not int8 or qat
    steps = {"equalization": "equalize", "AdaRound": "adaround", "bias correction": "bias_correct"}
    for step, key in steps.items():
        if asked[key] and post_training:
            raise MobileNetError(f"{step} is a step of post-training int8: use it with --int8")
    if asked["wide_residuals"] and post_training:
        raise MobileNetError("wide residuals are a choice of post-training int8: use --int8")


@dataclass
class Program:
    """What one export writes and checks: ``written`` (the graph the file holds) against
    ``folded`` (PyTorch's, BatchNorm folded) on ``inputs``, compared as ``compare`` says
    (logits, decoded detections or masks: :mod:`mobilenets.deploy.heads`)."""

    written: nn.Module
    folded: nn.Module
    inputs: list[torch.Tensor]
    calibration: list[torch.Tensor] | None
    metadata: dict[str, str]
    compare: Compare = agreement


def write_checked(
    target: Target,
    out: Path,
    program: Program,
    options: dict[str, object],
    load_options: dict[str, object],
    int8: bool,
) -> tuple[Agreement, bool]:
    """Write ``program`` into a staging folder beside ``out``, check it in the target's runtime,
    then give every file its final name (each renamed atomically, the main file last); the
    check, and whether a file of that name was replaced."""
    example = program.inputs[0][:1]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        replaced = out.exists()
        target.write(
            program.written, staged, example, program.calibration, program.metadata, **options
        )
        check = check_program(
            target,
            staged,
            program.folded,
            program.inputs,
            int8,
            len(example),
            load_options,
            compare=program.compare,
        )
        with contextlib.ExitStack() as stack:  # commits in reverse: the main file last
            for source, dest in zip(target.files(staged), target.files(out), strict=True):
                os.replace(source, stack.enter_context(atomic_path(dest)))
    return check, replaced


def quantization_of(
    target: Target,
    int8: bool,
    quantized: tuple[nn.Module, str] | None,
    options: dict[str, object],
) -> str | None:
    """How the file's int8 was made, for the report and the run's record (None for fp32)."""
    if not int8:
        return None
    quantization = quantized[1] if quantized else target.quantization
    if "observer" in options:
        quantization = f"{quantization}; activation ranges min-max, as AdaRound rounded for"
    if options.get("wide_residuals"):
        quantization = f"{quantization}; residual additions wider than int8"
    return quantization


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MobileNetError(f"{name} must be a positive integer, got {value!r}")
    return value


def export(
    run_dir: str | os.PathLike[str],
    fmt: str = "onnx",
    int8: bool = False,
    out: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    calibration: int = DEFAULT_CALIBRATION,
    verify_images: int = VERIFY_IMAGES,
    record: bool = True,
    quantized: tuple[torch.nn.Module, str] | None = None,
    equalize: bool | None = None,
    bias_correct: bool = False,
    adaround: bool | int = False,
    wide_residuals: bool = False,
    **format_options: object,
) -> ExportReport:
    """Export a run directory to ``fmt`` (int8 if asked), checked in that format's runtime.

    ``quantized``: an int8 graph with its ranges (a QAT run's, :func:`mobilenets.quant.qat.
    int8_graph`) and how it was made, written as it is (ExecuTorch). ``equalize`` (None: the
    format's default, :attr:`Target.equalize`), ``adaround`` (True, or steps per layer),
    ``bias_correct``: float steps on the calibration images before int8
    (:mod:`mobilenets.int8.prepare`).
    ``wide_residuals``: residual sums wider than int8 where the format can.
    ``format_options``: the format's own (ONNX: ``opset``, ``provider``, ``per_channel``,
    ``quant_format``, ``fp32_depthwise``, ``calibrate_method``), None meaning not asked.
    Nothing is written unless the check passes (:func:`write_checked`); with ``record`` it is
    added to the run's ``model.json``.
    """
    target = target_of(fmt)
    check_count("verify_images", verify_images)
    start = time.perf_counter()
    model, info = load_run(run_dir)
    for size in info.input_size[1:]:
        check_resolution(model, size)
    asked = asked_steps(target, equalize, adaround, bias_correct, wide_residuals)
    write_options, load_options = split_options(target, int8, format_options, wide_residuals)
    if out is None:
        names = [k for k, v in asked.items() if v]
        out = default_path(run_dir, target, int8, names, write_options)
    out = Path(out)
    check_asked(target, out, int8, quantized is not None, {**asked, "equalize": equalize})
    options = {**int8_options(target, adaround, wide_residuals), **write_options}
    inputs, checked_on = held_out_inputs(info, data, verify_images)
    folded = fold_batchnorm(model)
    written = quantized[0] if quantized else folded
    cal, calibrated_on, prepared = None, None, Preparation()
    if int8 and quantized is None:
        cal, calibrated_on = calibration_inputs(info, data, calibration)
        equalized = equalize_for(target, equalize)
        written, prepared = prepare_for_int8(folded, cal, equalized, bias_correct, adaround)
    precision = "int8" if int8 else "fp32"
    metadata, compare = onnx_metadata(info, precision, run_dir), comparison(folded, info)
    program = Program(graph_of(written), graph_of(folded), inputs, cal, metadata, compare)
    check, replaced = write_checked(target, out, program, options, load_options, int8)
    files = target.files(out)
    report = ExportReport(
        format=fmt,
        precision=precision,
        path=out,
        files=files,
        size_bytes=sum(f.stat().st_size for f in files),
        runtime=runtime_of(target, load_options),
        checked_on=checked_on,
        check=check,
        quantization=quantization_of(target, int8, quantized, options),
        calibration_images=sum(len(b) for b in cal) if cal else 0,
        calibrated_on=calibrated_on,
        **asdict(prepared),
        wide_residuals=wide_residuals,
        replaced=replaced,
        seconds=time.perf_counter() - start,
        extra={**write_options, **load_options},
    )
    if record:
        record_export(run_dir, info, report)
    return report


def record_export(run_dir: str | os.PathLike[str], info: RunInfo, report: ExportReport) -> None:
    """Add ``report`` to the run's ``model.json``, under ``metrics["exports"]``."""
    exports = info.metrics.setdefault("exports", {})
    exports[f"{report.format}-{report.precision}"] = report.to_dict()
    atomic_write_json(Path(run_dir) / META_FILE, info.to_json())


def runtime_of(target: Target, load_options: dict[str, object]) -> str:
    """The runtime's name for the report: ``onnxruntime (CUDA)`` where another provider ran it."""
    provider = load_options.get("provider")
    if provider is None:
        return target.runtime
    from mobilenets.deploy.runtime import check_provider, short_provider_name

    return f"{target.runtime.split(' (')[0]} ({short_provider_name(check_provider(str(provider)))})"
