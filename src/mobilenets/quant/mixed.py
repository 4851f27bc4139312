"""Mixed precision: int8 everywhere except the few layers that lose the accuracy.

The layers kept in float are named, or the N most sensitive of the sensitivity report, or every
layer under a logit SQNR when it alone is int8 (``below_sqnr``), or, with
``target_agreement``, the fewest of them that make the exported file agree with the float model
on that share of held-out images, or, with ``frontier``, the most agreeing of several counts
within the latency budget (every count measured: the trade-off curve itself). The search is
cheap where it can be and exact where it counts. PyTorch's fake quantization
(:mod:`mobilenets.int8.fake_quant`) predicts the agreement with the top k layers in float, for
k = 0, 1, ...; the runtime then quantizes and measures from the predicted k up, since the
runtime's int8 (fused kernels, quantized residual additions) is not the simulation's. Each
candidate's latency is timed against the all-int8 file, interleaved: a float layer between int8
ones costs a dequantize, a float kernel and a quantize, and a setting that costs more than
``max_latency_cost`` is not taken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.export import equalize_for, int8_options, target_of
from mobilenets.deploy.heads import comparison, graph_of
from mobilenets.deploy.images import calibration_inputs, held_out_inputs
from mobilenets.deploy.runtime import onnx_metadata
from mobilenets.deploy.target import Compare, Target, agreement
from mobilenets.errors import MobileNetError
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.int8.fake_quant import FakeQuantModel
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.int8.prepare import Preparation, prepare_for_int8
from mobilenets.io import atomic_path
from mobilenets.quant.candidates import Bench, Candidate, first_images, simulated_agreement
from mobilenets.quant.sensitivity import measure_sensitivity, rank_key
from mobilenets.quant.strategies import (
    DEFAULT_MAX_FLOAT,
    DEFAULT_MAX_LATENCY_COST,
    BelowSqnr,
    Frontier,
    Keep,
    Named,
    Ranking,
    Strategy,
    TargetAgreement,
)
from mobilenets.runs import RunInfo, load_run

DEFAULT_IMAGES = 300
DEFAULT_REPORT_IMAGES = 32
OnMessage = Callable[[str], object] | None


@dataclass
class MixedResult:
    """The file written, the all-int8 baseline it is measured against, and what was tried."""

    path: Path
    format: str
    runtime: str
    images: int
    images_from: str
    calibration_images: int
    chosen_by: str
    fp32_ms: float
    int8: Candidate
    mixed: Candidate
    predicted: list[float] = field(default_factory=list)  # simulated agreement, k = 0, 1, ...
    tried: list[Candidate] = field(default_factory=list)
    equalization: str | None = None  # what deploy.equalize rescaled first, if asked
    rounding: str | None = None  # what deploy.adaround rounded first, if asked
    bias_correction: str | None = None  # what deploy.bias_correction did first, if asked
    wide_residuals: bool = False  # residual sums wider than int8, in every int8 file

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def copy_program(target: Target, path: Path, out: Path) -> None:
    """Copy the program at ``path`` and its sidecars to ``out``, each file atomically, the
    main file last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # commits in reverse: the main file last
        for source, dest in zip(target.files(path), target.files(out), strict=True):
            shutil.copyfile(source, stack.enter_context(atomic_path(dest)))


def strategy_of(
    fp32_modules: Sequence[str] | None = None,
    keep: int | None = None,
    target_agreement: float | None = None,
    frontier: Sequence[int] | None = None,
    below_sqnr: float | None = None,
    max_latency_cost: float = DEFAULT_MAX_LATENCY_COST,
    max_float: int = DEFAULT_MAX_FLOAT,
) -> Strategy:
    """The strategy that the one given argument names (the command line's flags)."""
    given = [fp32_modules, keep, target_agreement, frontier, below_sqnr]
    if sum(g is not None for g in given) != 1:
        raise MobileNetError(
            "name the float layers, or give --keep N, --below-sqnr, --target-agreement or "
            "--frontier"
        )
    if fp32_modules is not None:
        return Named(fp32_modules)
    if keep is not None:
        return Keep(keep)
    if below_sqnr is not None:
        return BelowSqnr(below_sqnr)
    if target_agreement is not None:
        return TargetAgreement(target_agreement, max_float, max_latency_cost)
    return Frontier(list(frontier or []), max_latency_cost)


def rank(
    fq: FakeQuantModel,
    strategy: Strategy,
    calibration: list[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    report_images: int,
    say: Callable[[str], object],
    compare: Compare = agreement,
) -> Ranking:
    """The layers by sensitivity, most sensitive first, for a strategy that needs them;
    ``compare`` gives the agreement (top-1, a head's detections or pixels)."""
    if not strategy.ranked:
        return Ranking([])
    say(f"sensitivity of {len(fq.names())} layers on {report_images} images")
    fq.calibrate(calibration)
    layers, _, _ = measure_sensitivity(fq, first_images(inputs, report_images), compare=compare)
    ranked = sorted(layers, key=rank_key)
    order = [s.name for s in ranked]
    predicted = (
        simulated_agreement(fq, order, inputs, strategy.simulated, compare)
        if strategy.simulated
        else []
    )
    return Ranking(order, {s.name: s.alone_sqnr_db for s in ranked}, predicted)


def graphs(
    folded: nn.Module,
    info: RunInfo,
    calibration: list[torch.Tensor],
    steps: tuple[bool | None, bool, bool | int],
    say: Callable[[str], object],
) -> tuple[nn.Module, nn.Module, Preparation, Compare]:
    """The float graph of ``folded`` (BatchNorm folded) and the one the int8 files are made
    from (equalized, bias-corrected, AdaRounded as ``steps`` ask), each as its program holds it
    (a detector's outputs as one tensor, its layers named ``detector.``), what the steps did,
    and how outputs are compared (top-1, or a head's matched detections or pixels)."""
    written, prepared = prepare_for_int8(folded, calibration, *steps, on_message=say)
    return graph_of(folded), graph_of(written), prepared, comparison(folded, info)


def quantize_mixed(
    run_dir: str | os.PathLike[str],
    fmt: str = "onnx",
    fp32_modules: Sequence[str] | None = None,
    keep: int | None = None,
    target_agreement: float | None = None,
    frontier: Sequence[int] | None = None,
    below_sqnr: float | None = None,
    max_latency_cost: float = DEFAULT_MAX_LATENCY_COST,
    max_float: int = DEFAULT_MAX_FLOAT,
    images: int = DEFAULT_IMAGES,
    report_images: int = DEFAULT_REPORT_IMAGES,
    calibration: int = DEFAULT_CALIBRATION,
    out: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    on_message: OnMessage = None,
    equalize: bool | None = None,
    bias_correct: bool = False,
    adaround: bool | int = False,
    wide_residuals: bool = False,
    strategy: Strategy | None = None,
) -> MixedResult:
    """Write ``run_dir``'s model as int8 with some layers in float, chosen by ``strategy``
    (:mod:`mobilenets.quant.strategies`) or by the one of these given: named
    (``fp32_modules``), the ``keep`` most sensitive, every layer whose logit SQNR with it alone
    int8 is under ``below_sqnr`` dB, the fewest most sensitive that reach
    ``target_agreement`` top-1 agreement with float on ``images`` held-out images within
    ``max_latency_cost`` and ``max_float`` layers, or the most agreeing of the ``frontier``
    counts within ``max_latency_cost``. Nothing is written when the target is not reached or
    no count fits the budget; the error says the best agreement that was. ``equalize``
    (None: the format's default, ``Target.equalize``), ``adaround`` (True, or its steps per
    layer) and ``bias_correct`` change the float model first (:mod:`mobilenets.int8.prepare`),
    for the ranking and the files alike; ``wide_residuals`` keeps the residual sums wider than
    int8 in every int8 file, the all-int8 baseline included.
    """
    if strategy is None:
        strategy = strategy_of(
            fp32_modules, keep, target_agreement, frontier, below_sqnr, max_latency_cost, max_float
        )
    say = on_message or (lambda _: None)
    target = target_of(fmt)
    if not target.can.mixed_precision:
        raise MobileNetError(f"{target.name} cannot keep layers in float in an int8 file")
    options = int8_options(target, adaround, wide_residuals)
    model, info = load_run(run_dir)
    out = Path(run_dir) / f"model.mixed{target.suffix}" if out is None else Path(out)
    inputs, images_from = held_out_inputs(info, data, images)
    cal, _ = calibration_inputs(info, data, calibration)
    folded = fold_batchnorm(model)
    # a layer name that is not there: one line, before the float steps run and report
    strategy.check(FakeQuantModel(graph_of(folded)).names())
    steps = (equalize_for(target, equalize), bias_correct, adaround)
    folded, written, prepared, compare = graphs(folded, info, cal, steps, say)
    fq = FakeQuantModel(written)
    ranking = rank(fq, strategy, cal, inputs, report_images, say, compare)
    with tempfile.TemporaryDirectory(prefix="mobilenets-mixed-") as tmp:
        say("writing the fp32 and all-int8 files")
        metadata = onnx_metadata(info, "int8")
        bench = Bench(target, folded, written, Path(tmp), inputs, cal, metadata, options, compare)
        pick = strategy.pick(bench, ranking, say)
        fp32_ms, int8, tried = pick.fp32_ms, pick.int8, pick.tried
        if fp32_ms is None or int8 is None:  # every row from one measurement
            fp32_ms, int8, tried = bench.retimed(pick.tried, pick.paths)
        copy_program(target, pick.paths[pick.chosen], out)
    return MixedResult(
        path=out,
        format=fmt,
        runtime=target.runtime,
        images=len(bench.reference),
        images_from=images_from,
        calibration_images=sum(len(b) for b in cal),
        chosen_by=pick.chosen_by,
        fp32_ms=fp32_ms,
        int8=int8,
        mixed=tried[pick.chosen],
        predicted=ranking.predicted,
        tried=tried,
        **asdict(prepared),
        wide_residuals=wide_residuals,
    )
