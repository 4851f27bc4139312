"""Latency and throughput of one model in every form we deploy it, side by side.

Engines are timed in interleaved rounds (each engine runs a slice of its iterations, then the
next engine, and so on), so a change in background load during the run affects all of them
alike instead of whichever happened to be measured at the time. Each engine gets warm-up
calls first (allocators, onnxruntime's first-run planning, oneDNN's kernel selection).

Beside the latencies we report the model's mult-adds, the rate achieved (GMAC/s) and the
machine's own fp32 matmul rate measured in the same run: a 2048 x 2048 matmul is about the most
arithmetic-friendly work a CPU does, so ``2 * mult-adds / matmul FLOP/s`` is a floor under any
fp32 forward pass on this machine, and the distance to it says what is left to gain.
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
import onnxruntime as ort
import torch
from torch import nn

from mobilenets.cost import profile_model
from mobilenets.deploy.fold import fold_batchnorm
from mobilenets.deploy.onnx_export import export_model
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import (
    DEFAULT_PROVIDER,
    OPENVINO_PROVIDER,
    PRECISION_KEY,
    available_providers,
    check_provider,
    create_session,
    input_resolution,
    load_onnx,
    metadata,
    run_info_of,
    short_provider_name,
)
from mobilenets.errors import MobileNetError
from mobilenets.measure.timing import time_interleaved
from mobilenets.models import check_resolution, create_model, list_models
from mobilenets.runs import RunInfo, load_run

MATMUL_SIZE = 2048
CALIBRATION_INPUTS = 8


@dataclass
class Timing:
    """One engine's latencies (per batch), in milliseconds."""

    engine: str
    median_ms: float
    p90_ms: float
    images_per_s: float
    gmacs_per_s: float | None
    iterations: int


@dataclass
class BenchReport:
    """Every engine's timing for one model, input size, batch and thread count."""

    model: str
    resolution: int
    batch: int
    threads: int
    macs: int | None  # mult-adds per image
    matmul_gflops: float  # fp32, 2048 x 2048, same threads, same run
    timings: list[Timing] = field(default_factory=list)

    @property
    def fp32_floor_ms(self) -> float | None:
        """The batch's fp32 latency if every mult-add ran at the matmul rate."""
        if self.macs is None:
            return None
        return 2 * self.macs * self.batch / (self.matmul_gflops * 1e9) * 1e3

    def timing(self, engine: str) -> Timing:
        return next(t for t in self.timings if t.engine == engine)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fp32_floor_ms"] = self.fp32_floor_ms
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
    if str(source) in list_models():
        model = create_model(str(source), width_mult=width_mult).eval()
        info = RunInfo(
            model=str(source),
            model_kwargs={"width_mult": width_mult},
            class_names=[str(i) for i in range(model.num_classes)],
        )
        return f"{source} {width_mult:g}", model, info, None
    raise MobileNetError(
        f"{source} is not a model name ({', '.join(list_models())}), a run directory or an "
        "ONNX file"
    )


def benchmark(
    source: str | os.PathLike[str],
    resolution: int | None = None,
    batch: int = 1,
    threads: int | None = None,
    width_mult: float = 1.0,
    warmup: int = 10,
    iterations: int = 100,
    rounds: int = 5,
    providers: Sequence[str] | None = None,
) -> BenchReport:
    """Time a model as PyTorch eager (NCHW, channels_last), with BN folded, and in
    onnxruntime fp32 and int8 on each of ``providers``; or, for an ONNX file, that file alone.

    ``providers`` defaults to onnxruntime's CPU provider plus OpenVINO where it is installed.
    The int8 model is calibrated on random inputs: its ranges do not change its speed, and
    its accuracy is ``mobilenets quantize``'s business.
    """
    providers = default_providers() if providers is None else providers
    if not providers:
        raise MobileNetError("name at least one execution provider to bench")
    providers = list(dict.fromkeys(check_provider(p) for p in providers))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MobileNetError(f"batch must be a positive integer, got {batch!r}")
    threads = (os.cpu_count() or 1) if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise MobileNetError(f"threads must be a positive integer, got {threads!r}")
    label, model, info, onnx_path = resolve_source(source, width_mult)
    if onnx_path is not None:
        return _benchmark_onnx(
            onnx_path, resolution, batch, threads, warmup, iterations, rounds, providers
        )

    assert model is not None and info is not None
    resolution = int(info.input_size[1]) if resolution is None else resolution
    check_resolution(model, resolution)
    channels = int(info.input_size[0])
    info.input_size = (channels, resolution, resolution)
    macs = profile_model(model, resolution).total_macs
    x = torch.randn(batch, channels, resolution, resolution)

    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_model(model, info, fp32_path, [x])
        calibration = torch.utils.data.TensorDataset(
            torch.randn(CALIBRATION_INPUTS, channels, resolution, resolution)
        )
        quantize_model(fp32_path, int8_path, calibration)
        engines = _torch_engines(model, x)
        for provider in providers:
            for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
                name = engine_name(precision, provider)
                engines[name] = _ort_engine(path, x, threads, provider)
        with torch_threads(threads), torch.inference_mode():
            times = measure(engines, warmup, iterations, rounds)
    report = BenchReport(label, resolution, batch, threads, macs, matmul_gflops(threads))
    report.timings = [summarize(name, t, batch, macs) for name, t in times.items()]
    return report


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


def default_providers() -> list[str]:
    """The providers bench compares unless told: onnxruntime's own CPU kernels, and OpenVINO's
    where its plugin is installed."""
    return [p for p in (DEFAULT_PROVIDER, OPENVINO_PROVIDER) if p in available_providers()]


def engine_name(precision: str, provider: str = DEFAULT_PROVIDER) -> str:
    """``onnxruntime fp32`` for onnxruntime's own kernels, ``onnxruntime fp32 (OpenVINO)``
    for another provider's; ``precision=""`` names the provider alone."""
    name = " ".join(filter(None, ("onnxruntime", precision)))
    if provider == DEFAULT_PROVIDER:
        return name
    return f"{name} ({short_provider_name(provider)})"


def _ort_engine(path: Path, x: torch.Tensor, threads: int, provider: str):
    return _runner(create_session(path, threads=threads, provider=provider), x.numpy())


def _runner(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def _benchmark_onnx(
    path: Path,
    resolution: int | None,
    batch: int,
    threads: int,
    warmup: int,
    iterations: int,
    rounds: int,
    providers: Sequence[str],
) -> BenchReport:
    proto = load_onnx(path)
    sessions = {p: create_session(path, threads=threads, provider=p) for p in providers}
    channels, height, width = input_resolution(sessions[providers[0]])
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
    engines = {engine_name(precision, p): _runner(s, x) for p, s in sessions.items()}
    times = measure(engines, warmup, iterations, rounds)
    report = BenchReport(path.name, height, batch, threads, macs, matmul_gflops(threads))
    report.timings = [summarize(name, t, batch, macs) for name, t in times.items()]
    return report
