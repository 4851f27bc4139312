"""Latency, throughput and memory of one model in every runtime we deploy it to, side by side.

Engines are PyTorch eager (NCHW and channels_last, BN folded or not) and, for every target
whose runtime is installed (onnxruntime, OpenVINO, ExecuTorch, LiteRT), the exported program
in fp32 and int8. They are timed in interleaved rounds (each engine runs a slice of its
iterations, then the next engine, and so on), so a change in background load during the run
affects all of them alike. Each engine gets warm-up calls first (allocators, first-run
planning, kernel selection).

Beside the latencies we report the model's mult-adds and two floors measured in the same run:
the fp32 rate of a 2048 x 2048 matmul (about the most arithmetic-friendly work a CPU does, so
``2 * mult-adds / matmul FLOP/s`` is a floor under any fp32 forward pass on this machine) and
the int8 rate of the same matmul (``torch._int_mm``: VNNI where the CPU has it), the floor
under int8 inference.

Memory: each runtime's inference memory, measured in a fresh process per program
(:mod:`mobilenets.deploy.memory_probe`: the resident set's peak above what the imported runtime
already held, while the program is loaded and run twice; weights, packed weight copies and the
runtime's workspace included), next to the cost model's peak activation bytes plus the
weights at that precision; for ExecuTorch also the bytes its memory planner laid out (only
the tensors at the XNNPACK delegate's boundary: the delegate plans its own activations).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenets.analysis.cost import CostReport, count_params, profile_model
from mobilenets.analysis.timing import time_interleaved
from mobilenets.deploy.export import FORMATS, target_of
from mobilenets.deploy.heads import graph_of
from mobilenets.deploy.memory_probe import WARMUP_SHAPE, program_memory_bytes, warmup_model
from mobilenets.deploy.runtime import (
    PRECISION_KEY,
    create_session,
    input_resolution,
    load_onnx,
    metadata,
    onnx_metadata,
    run_info_of,
)
from mobilenets.deploy.target import Runner, Target
from mobilenets.deploy.targets import executorch
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.models import check_resolution, create_model, list_models
from mobilenets.runs import RunInfo, load_run

MATMUL_SIZE = 2048
INT8_BUDGET_S = 1.0  # seconds the int8 matmul rate may take to measure
CALIBRATION_INPUTS = 8


@dataclass
class Timing:
    """One engine's latencies (per batch), in milliseconds, and the memory it took."""

    engine: str
    median_ms: float
    p90_ms: float
    images_per_s: float
    gmacs_per_s: float | None
    iterations: int
    memory_bytes: int | None = None  # peak resident-set growth, loaded and run alone
    planned_bytes: int | None = None  # ExecuTorch: what its memory planner laid out
    model_memory_bytes: int | None = None  # cost model: peak activations + weights
    startup_bytes: int | None = None  # starting the runtime (a one-layer program), per process


@dataclass
class BenchReport:
    """Every engine's timing for one model, input size, batch and thread count."""

    model: str  # a label: the model and its width, the run directory, or the ONNX file
    resolution: int
    batch: int
    threads: int
    macs: int | None  # mult-adds per image
    matmul_gflops: float  # fp32, 2048 x 2048, same threads, same run
    int8_matmul_gops: float | None = None  # int8 x int8 -> int32, same size, same run
    timings: list[Timing] = field(default_factory=list)
    model_name: str | None = None  # the registered name (None for an ONNX file)
    width_mult: float | None = None

    @property
    def fp32_floor_ms(self) -> float | None:
        """The batch's fp32 latency if every mult-add ran at the matmul rate."""
        if self.macs is None:
            return None
        return 2 * self.macs * self.batch / (self.matmul_gflops * 1e9) * 1e3

    @property
    def int8_floor_ms(self) -> float | None:
        """The batch's int8 latency if every mult-add ran at the int8 matmul rate."""
        if self.macs is None or not self.int8_matmul_gops:
            return None
        return 2 * self.macs * self.batch / (self.int8_matmul_gops * 1e9) * 1e3

    def timing(self, engine: str) -> Timing:
        return next(t for t in self.timings if t.engine == engine)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fp32_floor_ms"] = self.fp32_floor_ms
        data["int8_floor_ms"] = self.int8_floor_ms
        return data


# --------------------------------------------------------------------------- timing


def measure(
    engines: dict[str, Callable[[], object]],
    warmup: int = 10,
    iterations: int = 100,
    rounds: int = 5,
) -> dict[str, list[float]]:
    """Seconds per call of each engine: ``warmup`` untimed calls each, then ``iterations``
    timed calls in ``rounds`` interleaved slices, each opened by two settle calls."""
    if warmup < 0 or iterations < 1 or rounds < 1:
        raise MobileNetError("warm-up must be >= 0 and iterations and rounds >= 1")
    for fn in engines.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, -(-iterations // rounds))
    return time_interleaved(engines, rounds, per_round, settle=2)


def summarize(engine: str, seconds: list[float], batch: int, macs: int | None) -> Timing:
    median = statistics.median(seconds)
    return Timing(
        engine=engine,
        median_ms=median * 1e3,
        p90_ms=float(np.percentile(seconds, 90)) * 1e3,
        images_per_s=batch / median,
        gmacs_per_s=None if macs is None else macs * batch / median / 1e9,
        iterations=len(seconds),
    )


def matmul_gflops(threads: int, size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """The fp32 rate of a square matmul in PyTorch (MKL/oneDNN), best of ``repeats``.

    Best rather than median: it estimates what the hardware can do, not what it did on
    average while sharing the machine.
    """
    with torch_threads(threads):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        best = min(_time_once(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def int8_matmul_gops(
    threads: int, size: int = MATMUL_SIZE, repeats: int = 10, budget_s: float = INT8_BUDGET_S
) -> float | None:
    """The int8 rate of the same matmul (``torch._int_mm``, int32 accumulation), best of up to
    ``repeats``; None where this PyTorch build has no CPU int8 matmul.

    The size doubles from 256 up to ``size`` only while a call stays well inside ``budget_s``:
    on a processor without int8 dot-product instructions (VNNI) PyTorch falls back to a
    reference kernel about 500 times slower, where one 2048 x 2048 call took 11 s and this
    measurement alone held ``bench`` for two minutes.
    """
    with torch_threads(threads):
        n = 256
        while True:
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            try:
                first = _time_once(lambda a=a, b=b: torch._int_mm(a, b))
            except RuntimeError:
                return None
            if n >= size or first * 8 * repeats > budget_s:  # 8x the work at twice the size
                break
            n *= 2
        calls = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
        best = min(_time_once(lambda: torch._int_mm(a, b)) for _ in range(calls))
    return 2 * n**3 / best / 1e9


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- sources


def resolve_source(
    source: str | os.PathLike[str], width_mult: float = 1.0
) -> tuple[str, nn.Module | None, RunInfo | None, Path | None]:
    """(label, model, info, onnx path) for a model name, a run directory or an ONNX file."""
    path = Path(source)
    if path.is_dir():
        model, info = load_run(path)
        return f"{info.model} ({path.name})", model, info, None
    if path.is_file():
        return path.name, None, None, path
    if str(source) in list_models(task=None):  # a classifier, detector or segmenter
        model = create_model(str(source), width_mult=width_mult).eval()
        info = RunInfo(
            model=str(source),
            model_kwargs={"width_mult": width_mult},
            class_names=[str(i) for i in range(model.num_classes)],
        )
        return f"{source} (width {width_mult:g})", model, info, None
    names = ", ".join(list_models(task=None))
    raise MobileNetError(f"{source} is not a model name ({names}), a run directory or an ONNX file")


def installed_formats() -> list[str]:
    """The export formats whose runtime is installed here (ONNX always is)."""
    return [name for name, target in FORMATS.items() if target.installed()]


def engine_name(target: Target, precision: str) -> str:
    """``onnxruntime fp32``, ``ExecuTorch int8``, ...: the runtime and the precision."""
    runtime = "onnxruntime" if target.name == "ONNX" else target.name
    return f"{runtime} {precision}"


@dataclass(frozen=True)
class Sizes:
    """What the memory model needs: the cost report, the folded weights, the batch."""

    cost: CostReport
    weights: int
    batch: int

    def modelled_bytes(self, precision: str) -> int:
        """Activations at their peak plus the weights, in ``precision``."""
        per_weight = 1 if precision == "int8" else 4
        return self.cost.peak_activation_bytes(precision) * self.batch + self.weights * per_weight


Memories = dict[str, tuple[int | None, int | None, int, int | None]]


def _runtime_engines(
    targets: Sequence[Target],
    folded: nn.Module,
    x: torch.Tensor,
    info: RunInfo,
    threads: int,
    memory: bool,
    sizes: Sizes,
    folder: str,
    engines: dict[str, Callable[[], object]],
) -> Memories:
    """Write ``folded`` with every target in fp32 and int8 (calibrated on random inputs) into
    ``folder``, add a call of each program to ``engines``, and return each one's memory:
    measured, planned (ExecuTorch), modelled and at start-up."""
    channels, resolution = x.shape[1], x.shape[-1]
    calibration = [torch.randn(CALIBRATION_INPUTS, channels, resolution, resolution)]
    memories: Memories = {}
    for target in targets:
        fmt = next(f for f, t in FORMATS.items() if t is target)
        start_up = Path(folder) / f"warmup{target.suffix}"
        if memory:
            example = torch.zeros(WARMUP_SHAPE)
            target.write(warmup_model(), start_up, example, None, onnx_metadata(info, "fp32"))
        for precision in ("fp32", "int8"):
            path = Path(folder) / f"model.{precision}{target.suffix}"
            cal = calibration if precision == "int8" else None
            target.write(folded, path, x, cal, onnx_metadata(info, precision))
            name = engine_name(target, precision)
            engines[name] = _loaded(target, path, x, threads)
            used = (
                program_memory_bytes(fmt, path, start_up, tuple(x.shape), threads)
                if memory
                else {"bytes": None, "startup_bytes": None}
            )
            planned = executorch.planned_memory_bytes(path) if target.suffix == ".pte" else None
            modelled = sizes.modelled_bytes(precision)
            memories[name] = (used["bytes"], planned, modelled, used["startup_bytes"])
    return memories


def benchmark(
    source: str | os.PathLike[str],
    resolution: int | None = None,
    batch: int = 1,
    threads: int | None = None,
    width_mult: float = 1.0,
    warmup: int = 10,
    iterations: int = 100,
    rounds: int = 5,
    formats: Sequence[str] | None = None,
    memory: bool = True,
) -> BenchReport:
    """Time a model as PyTorch eager (NCHW, channels_last, BN folded or not) and in every
    runtime of ``formats`` (default: all installed) in fp32 and int8; or, for an ONNX file,
    that file alone in onnxruntime. With ``memory``, each program's memory is measured too,
    in a fresh process of its own (:mod:`mobilenets.deploy.memory_probe`).

    The int8 programs are calibrated on random inputs: ranges do not change their speed, and
    their accuracy is ``mobilenets export --int8``'s business.
    """
    formats = installed_formats() if formats is None else list(dict.fromkeys(formats))
    if not formats:
        raise MobileNetError("name at least one export format to bench")
    targets = [target_of(f) for f in formats]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MobileNetError(f"batch must be a positive integer, got {batch!r}")
    threads = (os.cpu_count() or 1) if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise MobileNetError(f"threads must be a positive integer, got {threads!r}")
    label, model, info, onnx_path = resolve_source(source, width_mult)
    if onnx_path is not None:
        return _benchmark_onnx(onnx_path, resolution, batch, threads, warmup, iterations, rounds)

    assert model is not None and info is not None
    resolution = int(info.input_size[1]) if resolution is None else resolution
    check_resolution(model, resolution)
    channels = int(info.input_size[0])
    info.input_size = (channels, resolution, resolution)
    cost = profile_model(model, resolution)
    folded = graph_of(fold_batchnorm(model))  # a detector's program: one output, as exported
    x = torch.randn(batch, channels, resolution, resolution)

    engines = _torch_engines(model, x)
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        sizes = Sizes(cost, count_params(folded), batch)
        memories = _runtime_engines(targets, folded, x, info, threads, memory, sizes, tmp, engines)
        with torch_threads(threads), torch.inference_mode():
            times = measure(engines, warmup, iterations, rounds)
    report = BenchReport(
        label,
        resolution,
        batch,
        threads,
        cost.total_macs,
        matmul_gflops(threads),
        int8_matmul_gops(threads),
        model_name=info.model,
        width_mult=float(info.model_kwargs.get("width_mult", 1.0)),
    )
    report.timings = [summarize(name, t, batch, cost.total_macs) for name, t in times.items()]
    for timing in report.timings:
        if timing.engine in memories:
            (
                timing.memory_bytes,
                timing.planned_bytes,
                timing.model_memory_bytes,
                timing.startup_bytes,
            ) = memories[timing.engine]
    return report


def _loaded(target: Target, path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    """A no-argument call of ``path``'s program on ``x``."""
    array = np.ascontiguousarray(x.numpy())
    runner: Runner = target.load(path, threads)
    return lambda: runner(array)


def _torch_engines(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    model = model.eval()
    folded = fold_batchnorm(model)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded_cl = fold_batchnorm(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    return {
        "PyTorch eager NCHW": lambda: model(x),
        "PyTorch eager channels_last": lambda: model_cl(x_cl),
        "PyTorch BN folded NCHW": lambda: folded(x),
        "PyTorch BN folded channels_last": lambda: folded_cl(x_cl),
    }


def _benchmark_onnx(
    path: Path,
    resolution: int | None,
    batch: int,
    threads: int,
    warmup: int,
    iterations: int,
    rounds: int,
) -> BenchReport:
    proto = load_onnx(path)
    session = create_session(path, threads=threads)
    channels, height, width = input_resolution(session)
    if resolution is not None and resolution != height:
        raise MobileNetError(
            f"{path} takes {height}x{width} inputs, not {resolution}x{resolution}; "
            "export the run again at that resolution (or bench the run directory)"
        )
    props = metadata(proto)
    macs = None
    if "mobilenets.run" in props:
        info = run_info_of(proto, path)
        macs = profile_model(info.build_model(), height).total_macs
    precision = props.get(PRECISION_KEY, "fp32")
    x = np.random.default_rng(0).standard_normal((batch, channels, height, width), np.float32)
    feed = {session.get_inputs()[0].name: x}
    engines = {f"onnxruntime {precision}": lambda: session.run(None, feed)}
    times = measure(engines, warmup, iterations, rounds)
    report = BenchReport(
        path.name, height, batch, threads, macs, matmul_gflops(threads), int8_matmul_gops(threads)
    )
    report.timings = [summarize(name, t, batch, macs) for name, t in times.items()]
    return report
