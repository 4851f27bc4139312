"""The candidates of a mixed-precision search: each one written by the target, checked in its
runtime against the float model and timed against the all-int8 file, interleaved.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.analysis.timing import time_interleaved
from mobilenets.deploy.target import (
    Agreement,
    Compare,
    Target,
    agreement,
    pytorch_logits,
    run_batches,
)
from mobilenets.int8.fake_quant import FakeQuantModel

TIMING_ROUNDS = 20
TIMING_PER_ROUND = 5


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


def simulated_agreement(
    fq: FakeQuantModel,
    order: Sequence[str],
    images: Sequence[torch.Tensor],
    max_float: int,
    compare: Compare = agreement,
) -> list[float]:
    """Fake-quantized top-1 agreement (a head's: ``compare``'s) with float with the first k of
    ``order`` left in float, for k = 0 .. ``max_float``."""
    with torch.inference_mode():
        fq.set(enabled=())
        reference = torch.cat([fq(x) for x in images]).numpy()
        agreements = []
        for k in range(max_float + 1):
            kept = set(order[:k])
            fq.set(enabled=[n for n in fq.names() if n not in kept])
            logits = torch.cat([fq(x) for x in images]).numpy()
            agreements.append(compare(reference, logits).top1_agreement)
    return agreements


class Bench:
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
        compare: Compare = agreement,
    ) -> None:
        self.target, self.folded, self.written, self.folder = target, folded, written, folder
        self.compare = compare  # top-1, or a head's matched detections or pixels
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
        return self.compare(self.reference, run_batches(runner, self.inputs, batch))

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


def first_images(batches: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first ``n`` images of ``batches``, in batches of the same size."""
    return list(torch.cat(list(batches))[:n].split(len(batches[0])))
