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
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.analysis.timing import time_interleaved
from mobilenets.deploy.export import int8_options, target_of
from mobilenets.deploy.images import calibration_inputs, held_out_inputs
from mobilenets.deploy.runtime import onnx_metadata
from mobilenets.deploy.target import Agreement, Target, agreement, pytorch_logits, run_batches
from mobilenets.errors import MobileNetError
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.int8.fake_quant import FakeQuantModel
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.int8.prepare import prepare_for_int8
from mobilenets.io import atomic_path
from mobilenets.quant.sensitivity import measure_sensitivity, rank_key
from mobilenets.runs import load_run

DEFAULT_IMAGES = 300
DEFAULT_REPORT_IMAGES = 32
DEFAULT_MAX_LATENCY_COST = 0.15
DEFAULT_MAX_FLOAT = 8
TIMING_ROUNDS = 20
TIMING_PER_ROUND = 5
OnMessage = Callable[[str], object] | None


@dataclass
class Candidate:
    """One setting tried in the runtime: which layers stayed float, and what that gave."""

    fp32_modules: list[str]
    top1_agreement: float
    sqnr_db: float
    latency_ms: float
    latency_cost: float  # latency / all-int8 latency - 1

    @classmethod
    def of(cls, modules: Sequence[str], check: Agreement, ms: float, int8_ms: float) -> Candidate:
        return cls(list(modules), check.top1_agreement, check.sqnr_db, ms, ms / int8_ms - 1)

    def describe(self) -> str:
        """One progress line: what this many float layers gave."""
        return (
            f"{len(self.fp32_modules)} layers in float: agreement {self.top1_agreement:.1%}, "
            f"SQNR {self.sqnr_db:.1f} dB, latency {self.latency_cost:+.0%}"
        )


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


def simulated_agreement(
    fq: FakeQuantModel, order: Sequence[str], images: Sequence[torch.Tensor], max_float: int
) -> list[float]:
    """Fake-quantized top-1 agreement with float with the first k of ``order`` left in float,
    for k = 0 .. ``max_float``."""
    with torch.inference_mode():
        fq.set(enabled=())
        reference = torch.cat([fq(x) for x in images]).numpy()
        agreements = []
        for k in range(max_float + 1):
            kept = set(order[:k])
            fq.set(enabled=[n for n in fq.names() if n not in kept])
            logits = torch.cat([fq(x) for x in images]).numpy()
            agreements.append(agreement(reference, logits).top1_agreement)
    return agreements


class _Bench:
    """Writes candidates with one target and measures them against the float model
    (``folded``); the int8 files are made from ``written``, the same function rescaled by
    :func:`~mobilenets.int8.prepare.prepare_for_int8` when asked."""

    def __init__(
        self,
        target: Target,
        folded: nn.Module,
        written: nn.Module,
        folder: Path,
        inputs: Sequence[torch.Tensor],
        calibration: list[torch.Tensor],
        metadata: dict[str, str],
        options: dict[str, object],
    ) -> None:
        self.target, self.folded, self.written, self.folder = target, folded, written, folder
        self.inputs, self.calibration, self.metadata = inputs, calibration, metadata
        self.options = options  # for every int8 file: range observer, wide residuals
        self.example = inputs[0][:1]
        self.reference = pytorch_logits(folded, inputs)
        self.fp32 = self.write(None)
        if target.can.float_file:  # ONNX: every candidate quantizes one float file
            shared = self.fp32
            if written is not folded:
                shared = folder / f"written{target.suffix}"
                target.write(written, shared, self.example, None, metadata)
            self.options = {**options, "float_file": shared}
        self.int8 = self.write(())
        self.int8_check = self.check(self.int8)

    def write(self, fp32_modules: Sequence[str] | None) -> Path:
        """fp32 (``None``) or int8 with ``fp32_modules`` kept in float."""
        tag = "fp32" if fp32_modules is None else f"int8-{len(list(self.folder.iterdir()))}"
        path = self.folder / f"{tag}{self.target.suffix}"
        if fp32_modules is None:
            self.target.write(self.folded, path, self.example, None, self.metadata)
        else:
            self.target.write(
                self.written,
                path,
                self.example,
                self.calibration,
                {**self.metadata, "mobilenets.fp32_modules": ",".join(fp32_modules)},
                fp32_modules=list(fp32_modules),
                **self.options,
            )
        return path

    def check(self, path: Path) -> Agreement:
        runner = self.target.load(path, None)
        batch = len(self.example) if self.target.can.fixed_batch else None
        return agreement(self.reference, run_batches(runner, self.inputs, batch))

    def latency_ms(self, *paths: Path) -> list[float]:
        """Median single-image latency of each file, timed in interleaved rounds."""
        image = np.ascontiguousarray(self.example.numpy(), dtype=np.float32)
        runners = {str(p): self.target.load(p, None) for p in paths}
        calls = {name: (lambda r=runner: r(image)) for name, runner in runners.items()}
        for call in calls.values():
            call()
        times = time_interleaved(calls, TIMING_ROUNDS, TIMING_PER_ROUND, settle=1)
        return [1000 * statistics.median(times[str(p)]) for p in paths]

    def candidate(self, fp32_modules: Sequence[str]) -> tuple[Candidate, Path, float]:
        path = self.write(fp32_modules)
        fp32_ms, int8_ms, ms = self.latency_ms(self.fp32, self.int8, path)
        return Candidate.of(fp32_modules, self.check(path), ms, int8_ms), path, fp32_ms

    def retimed(
        self, tried: Sequence[Candidate], paths: Sequence[Path]
    ) -> tuple[float, Candidate, list[Candidate]]:
        """The fp32 file, the all-int8 file and every tried file timed together in one
        interleaved measurement: each row of the report and its cost against all-int8 then
        come from the same timings (timed one candidate at a time, a row's cost was against
        that run's own int8 time, while the int8 row showed another)."""
        fp32_ms, int8_ms, *times = self.latency_ms(self.fp32, self.int8, *paths)
        again = [
            replace(c, latency_ms=ms, latency_cost=ms / int8_ms - 1)
            for c, ms in zip(tried, times, strict=True)
        ]
        int8 = Candidate.of([], self.int8_check, int8_ms, int8_ms)
        return fp32_ms, int8, again


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
    equalize: bool = False,
    bias_correct: bool = False,
    adaround: bool | int = False,
    wide_residuals: bool = False,
) -> MixedResult:
    """Write ``run_dir``'s model as int8 with some layers in float, chosen one of five ways:
    named (``fp32_modules``), the ``keep`` most sensitive, every layer whose logit SQNR with
    it alone int8 is under ``below_sqnr`` dB (the report's "alone" column), the fewest most
    sensitive that reach ``target_agreement`` top-1 agreement with float on ``images``
    held-out images within ``max_latency_cost`` and ``max_float`` layers, or the most
    agreeing of the ``frontier`` counts of most sensitive layers within ``max_latency_cost``
    (each count is measured in the runtime and kept in ``tried``). Nothing is written when
    the target is not reached or no count fits the budget; the error says the best agreement
    that was. ``equalize``, ``adaround`` (True, or its steps per layer) and ``bias_correct``
    change the float model first (:mod:`mobilenets.int8.prepare`), for the sensitivity
    ranking and the files alike;
    ``wide_residuals`` keeps the residual sums wider than int8 in every int8 file, the
    all-int8 baseline included.
    """
    chosen = [fp32_modules, keep, target_agreement, frontier, below_sqnr]
    if sum(c is not None for c in chosen) != 1:
        raise MobileNetError(
            "name the float layers, or give --keep N, --below-sqnr, --target-agreement or "
            "--frontier"
        )
    if target_agreement is not None and not 0 < target_agreement <= 1:
        raise MobileNetError(f"target agreement must be in (0, 1], got {target_agreement}")
    if keep is not None and keep < 0:
        raise MobileNetError(f"--keep must be >= 0, got {keep}")
    if frontier is not None and (not frontier or min(frontier) < 0):
        raise MobileNetError(f"--frontier needs counts >= 0, got {list(frontier)}")
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
    written, prepared = prepare_for_int8(
        folded, cal, equalize, bias_correct, adaround, on_message=say
    )
    fq = FakeQuantModel(written)
    names = fq.names()
    if fp32_modules is not None:
        unknown = [n for n in fp32_modules if n not in names]
        if unknown:
            raise MobileNetError(f"no quantizable layer named {', '.join(unknown)}")
    order: list[str] = list(fp32_modules or [])
    predicted: list[float] = []
    if fp32_modules is None:
        say(f"sensitivity of {len(names)} layers on {report_images} images")
        fq.calibrate(cal)
        layers, _, _ = measure_sensitivity(fq, first_images(inputs, report_images))
        ranked = sorted(layers, key=rank_key)
        order = [s.name for s in ranked]
        if below_sqnr is not None:
            keep = sum(s.alone_sqnr_db < below_sqnr for s in ranked)  # a prefix of the ranking
        if target_agreement is not None:
            predicted = simulated_agreement(fq, order, inputs, max_float)
    with tempfile.TemporaryDirectory(prefix="mobilenets-mixed-") as tmp:
        say("writing the fp32 and all-int8 files")
        metadata = onnx_metadata(info, "int8")
        bench = _Bench(target, folded, written, Path(tmp), inputs, cal, metadata, options)
        tried: list[Candidate] = []
        paths: list[Path] = []  # paths[i] holds tried[i]
        if frontier is not None:
            for k in sorted({min(k, len(order)) for k in frontier}):  # 99 of 53: all 53
                candidate_path = bench.write(order[:k])
                check = bench.check(candidate_path)
                tried.append(Candidate.of(order[:k], check, math.nan, math.nan))
                paths.append(candidate_path)
                say(
                    f"{k} layers in float: agreement {check.top1_agreement:.1%}, "
                    f"SQNR {check.sqnr_db:.1f} dB"
                )
            say(f"timing the {len(paths)} files against fp32 and all-int8, interleaved")
            fp32_ms, int8, tried = bench.retimed(tried, paths)
            within = [i for i, c in enumerate(tried) if c.latency_cost <= max_latency_cost]
            if not within:
                cheapest = min(tried, key=lambda c: c.latency_cost)
                raise MobileNetError(
                    f"no count of float layers keeps the latency within "
                    f"{max_latency_cost:.0%} of all-int8; the cheapest, "
                    f"{len(cheapest.fp32_modules)}, costs {cheapest.latency_cost:+.0%}"
                )
            pick = max(within, key=lambda i: (tried[i].top1_agreement, tried[i].sqnr_db))
            best, path = tried[pick], paths[pick]
            chosen_by = (
                f"most agreeing of {len(tried)} counts within {max_latency_cost:.0%} latency"
            )
        elif target_agreement is None:
            kept = order if keep is None else order[:keep]
            path = bench.write(kept)  # timed below, with the fp32 and all-int8 files
            best = Candidate.of(kept, bench.check(path), math.nan, math.nan)
            tried.append(best)
            paths.append(path)
            chosen_by = f"named: {len(kept)} layers" if keep is None else f"{keep} most sensitive"
            if below_sqnr is not None:
                chosen_by = f"{keep} under {below_sqnr:g} dB with only that layer int8"
        else:
            start = next((k for k, a in enumerate(predicted) if a >= target_agreement), max_float)
            best = path = None
            for k in range(start, max_float + 1):
                candidate, candidate_path, fp32_ms = bench.candidate(order[:k])
                tried.append(candidate)
                paths.append(candidate_path)
                say(candidate.describe())
                if candidate.latency_cost > max_latency_cost:
                    break
                if candidate.top1_agreement >= target_agreement:
                    best, path = candidate, candidate_path
                    break
            if best is None:
                reached = max(tried, key=lambda c: c.top1_agreement)
                raise MobileNetError(
                    f"no mixed-precision setting reaches {target_agreement:.1%} agreement "
                    f"within {max_float} float layers and {max_latency_cost:.0%} latency; the "
                    f"best reached {reached.top1_agreement:.1%} with "
                    f"{len(reached.fp32_modules)} layers in float "
                    f"({reached.latency_cost:+.0%} latency)"
                )
            chosen_by = f"fewest most sensitive reaching {target_agreement:.1%}"
        if frontier is None:  # the table's rows from one measurement, as the frontier's are
            fp32_ms, int8, tried = bench.retimed(tried, paths)
        best = tried[paths.index(path)]
        out.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:  # commits in reverse: the main file last
            for source, dest in zip(target.files(path), target.files(out), strict=True):
                shutil.copyfile(source, stack.enter_context(atomic_path(dest)))
    return MixedResult(
        path=out,
        format=fmt,
        runtime=target.runtime,
        images=len(bench.reference),
        images_from=images_from,
        calibration_images=sum(len(b) for b in cal),
        chosen_by=chosen_by,
        fp32_ms=fp32_ms,
        int8=int8,
        mixed=best,
        predicted=predicted,
        tried=tried,
        **asdict(prepared),
        wide_residuals=wide_residuals,
    )


def first_images(batches: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first ``n`` images of ``batches``, in batches of the same size."""
    return list(torch.cat(list(batches))[:n].split(len(batches[0])))
