"""Measure the latency model's rates on this machine and runtime, and cache them.

Calibration times single layers, not whole networks: for each latency kind it takes layer
shapes that the registered models really run (every family at a few widths and resolutions,
so a family added to the registry is calibrated for without a change here), builds each as a
one-layer ONNX graph (a convolution with its fused activation, a ``Gemm``, a pooling), and
reads the layer's kernel time from onnxruntime's profiler. A one-layer graph also gets the
NCHWc layout conversions (``ReorderInput``/``ReorderOutput``) that a whole network pays only at
its ends; the profiler times them as nodes of their own, which are left out. The runtime's
cost between kernels and per call is measured on chains of tiny layers of two lengths.

Each kind's roofline is then fitted to its samples by least squares on the logarithm of the
time, so that a 20 us layer weighs as much as a 2 ms one. Times are the fastest of several
runs: on a shared machine the fastest run is the one least disturbed by other processes.

The result is cached per runtime, provider and thread count, and keyed by the machine (CPU
model and count) and the runtime version: a calibration from elsewhere is never used.

"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import onnxruntime as ort
from scipy.optimize import least_squares

from mobilenets.analysis.cost import CostReport
from mobilenets.errors import MobileNetError
from mobilenets.io import atomic_write_json
from mobilenets.latency.graphs import channel_block
from mobilenets.latency.machine import (
    DEFAULT_RUNTIME,
    RUNTIMES,
    cache_path,
    check_runtime,
    check_threads,
    machine_fingerprint,
    read_calibration,
    stale_reason,
)
from mobilenets.latency.model import (
    FUSED_KINDS,
    IN_CONTEXT_KINDS,
    LATENCY_KINDS,
    MEMORY_ONLY_KINDS,
    WARM_KIND,
    Calibration,
    LatencyPrediction,
    Roofline,
    predict_latency,
)
from mobilenets.latency.profiling import (
    measure_samples,
    measure_stream_overlap,
    measure_weight_cache,
    median_split,
    overhead_chains,
    overhead_split,
)
from mobilenets.latency.samples import (
    PER_KIND,
    SAMPLE_RESOLUTIONS,
    SAMPLE_WIDTHS,
    Sample,
    registry_samples,
    spread,
)

ERROR_FLOOR_S = 1e-6  # fit errors of samples quicker than this are relative to it

# --------------------------------------------------------------------------- fitting


def fit_roofline(samples: Sequence[Sample], memory_only: bool = False) -> Roofline:
    """The roofline through ``samples`` that minimises the squared log error of the time.

    A soft-L1 loss keeps a sample slowed by another process from dragging the fit.
    """
    macs = np.array([s.macs for s in samples], dtype=float)
    nbytes = np.array([s.bytes for s in samples], dtype=float)
    seconds = np.array([s.seconds for s in samples], dtype=float)
    if len(samples) == 0 or not np.all(seconds > 0):
        raise MobileNetError("a roofline needs one or more samples with a positive time")

    def predict(theta: np.ndarray) -> np.ndarray:
        memory = nbytes / np.exp(theta[0])
        compute = 0.0 if memory_only else macs / np.exp(theta[2])
        return np.maximum(compute, memory) + np.exp(theta[1])

    theta0 = [math.log(np.max(nbytes / seconds)), math.log(0.3 * np.min(seconds))]
    if not memory_only:
        theta0.append(math.log(np.max(np.maximum(macs, 1) / seconds)))
    result = least_squares(
        lambda t: np.log(predict(t)) - np.log(seconds),
        np.array(theta0),
        loss="soft_l1",
        f_scale=0.1,
    )
    theta = result.x
    return Roofline(
        macs_per_s=math.inf if memory_only else float(np.exp(theta[2])),
        bytes_per_s=float(np.exp(theta[0])),
        overhead_s=float(np.exp(theta[1])),
    )


def fit_fused_pass(samples: Sequence[Sample]) -> Roofline:
    """The bytes per second of a pass fused into the kernel before it (ReLU6's clamp or
    HardSwish inside its convolution), by least squares on the seconds it adds, samples at
    or below zero included: it is no call of its own, so it has no fixed cost, and keeping
    only the samples that came out above zero biased a small pass's price up (a fitted 4 us
    per ReLU6 priced MobileNetV2 0.35 at 96 px 45% slow with 2 threads). Free when the
    passes added nothing.

    Each sample weighs by the inverse square of its scatter (``scatter_s``, at least
    :data:`ERROR_FLOOR_S`): the largest map's pass sits after a convolution of 4.5 ms whose
    time scatters by 0.6 ms from session to session, so it saw none of its 0.2 ms, yet
    unweighted it set the rate (ReLU6 fitted at 437 GB/s against 55-107 at 1 thread before,
    MobileNetV2 priced up to 20% fast)."""
    nbytes = np.array([s.bytes for s in samples], dtype=float)
    seconds = np.array([s.seconds for s in samples], dtype=float)
    weights = np.array([max(s.scatter_s, ERROR_FLOOR_S) ** -2 for s in samples])
    moved = float(np.sum(weights * nbytes * seconds))
    rate = float(np.sum(weights * nbytes**2)) / moved if moved > 0 else math.inf
    return Roofline(macs_per_s=math.inf, bytes_per_s=rate, overhead_s=0.0)


def relative_errors(roof: Roofline, samples: Sequence[Sample]) -> list[float]:
    """Each sample's fit error relative to its time, or to :data:`ERROR_FLOOR_S` where its
    time is below that: a fused pass measured barely above zero showed a worst error of
    4.9e15%."""
    return [
        abs(roof.seconds(s.macs, s.bytes) - s.seconds) / max(s.seconds, ERROR_FLOOR_S)
        for s in samples
    ]


def fit_calibration(
    samples: Sequence[Sample],
    node_overhead_s: float,
    run_overhead_s: float,
    runtime: str = DEFAULT_RUNTIME,
    threads: int = 0,
    weight_cache_bytes: float = 0.0,
    weight_stream_bytes_per_s: float = 0.0,
    block: int = 1,
    stream_overlap: float = 0.0,
    weight_cold_bytes: float = 0.0,
    passes: int = 0,
) -> Calibration:
    """Fit one roofline per latency kind to measured ``samples`` (timed in ``passes``)."""
    rooflines, fit, kind_nodes = {}, {}, {}
    for kind in LATENCY_KINDS:
        timed = [s for s in samples if s.kind == kind and math.isfinite(s.seconds)]
        of_kind = [s for s in timed if s.seconds > 0]  # at or below 0: too small to see
        if kind in FUSED_KINDS and timed:
            roof = fit_fused_pass(timed)
        elif of_kind:
            roof = fit_roofline(of_kind, memory_only=kind in MEMORY_ONLY_KINDS)
        else:
            raise MobileNetError(f"no {kind} layers were measured; cannot calibrate")
        if kind in IN_CONTEXT_KINDS:
            kind_nodes[kind] = round(float(np.median([s.nodes for s in timed])))
        rooflines[kind] = roof
        # no error where no sample was visible: None, not NaN (NaN != NaN, and a calibration
        # read back from its cache must equal the one written)
        errors = relative_errors(roof, of_kind) if of_kind else None
        fit[kind] = {
            "samples": len(timed),
            "median_error": None if errors is None else float(np.median(errors)),
            "max_error": None if errors is None else float(np.max(errors)),
        }
    return Calibration(
        runtime=runtime,
        runtime_version=ort.__version__,
        provider=RUNTIMES[runtime],
        threads=threads,
        machine=machine_fingerprint(),
        rooflines=rooflines,
        node_overhead_s=node_overhead_s,
        run_overhead_s=run_overhead_s,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        fit=fit,
        weight_cache_bytes=weight_cache_bytes,
        weight_cold_bytes=weight_cold_bytes,
        weight_stream_bytes_per_s=weight_stream_bytes_per_s,
        channel_block=block,
        stream_overlap=stream_overlap,
        kind_nodes=kind_nodes,
        passes=passes,
    )


def calibrate(
    runtime: str = DEFAULT_RUNTIME,
    threads: int = 0,
    per_kind: int = PER_KIND,
    budget_s: float = 0.1,
    models: Iterable[str] | None = None,
    widths: Sequence[float] = SAMPLE_WIDTHS,
    resolutions: Sequence[int] = SAMPLE_RESOLUTIONS,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Measure and fit this machine's rates for ``runtime`` with ``threads`` intra-op threads
    (0: the runtime's default). ``budget_s`` is roughly the seconds spent timing each layer,
    and each graph of the weight-cache and streaming measurements."""
    provider = check_runtime(runtime)
    check_threads(threads)
    if per_kind < 3:
        raise MobileNetError(f"a roofline needs at least 3 layers per kind, got {per_kind}")
    block = channel_block()
    samples = [
        replace(s, block=block)
        for s in spread(registry_samples(models, widths, resolutions), per_kind)
    ]
    # the same fully connected layers again, alone, their weights warm in cache
    samples += [replace(s, kind=WARM_KIND) for s in samples if s.kind == "fc"]
    # the runtime overhead is split between samples all through the passes, and the median
    # kept: split one after another at their end, its splits' median came out anywhere from
    # -3.3 to -4.9 us per node with 2 threads between calibrations
    splits: list[tuple[float, float]] = []
    with overhead_chains() as chains:
        measured, passes = measure_samples(
            samples,
            provider,
            threads,
            budget_s,
            progress,
            between=lambda: splits.append(overhead_split(chains, provider, threads)),
        )
        if not splits:
            splits.append(overhead_split(chains, provider, threads))
    node_overhead, run_overhead = median_split(splits)
    cache, cold, stream = measure_weight_cache(provider, threads, budget_s)
    overlap = measure_stream_overlap(stream, provider, threads, budget_s)
    return fit_calibration(
        measured,
        node_overhead,
        run_overhead,
        runtime,
        threads,
        cache,
        stream,
        block,
        overlap,
        weight_cold_bytes=cold,
        passes=passes,
    )


def load_calibration(
    runtime: str = DEFAULT_RUNTIME,
    threads: int = 0,
    recalibrate: bool = False,
    say: Callable[[str], None] | None = None,
    **calibrate_kwargs: object,
) -> Calibration:
    """The cached calibration for ``runtime`` and ``threads``, measured now if there is none,
    if it is stale (another machine or runtime version: ``say`` is told why) or if asked to."""
    check_threads(threads)
    path = cache_path(runtime, threads)
    if path.is_file() and not recalibrate:
        try:
            cached = read_calibration(path)
            reason = stale_reason(cached)
        except MobileNetError as e:
            reason = str(e)
        if reason is None:
            return cached
        if say is not None:
            say(f"the cached latency calibration {path} is stale: {reason}; recalibrating")
    elif say is not None and not recalibrate:
        say(f"no latency calibration for {runtime} with threads={threads} yet; calibrating")
    calibration = calibrate(runtime, threads, **calibrate_kwargs)  # type: ignore[arg-type]
    atomic_write_json(path, calibration.to_json())
    return calibration


def predict_cached(
    report: CostReport,
    runtime: str = DEFAULT_RUNTIME,
    threads: int = 0,
    say: Callable[[str], None] | None = None,
) -> LatencyPrediction:
    """``report``'s predicted latency with this machine's cached calibration (made first if
    there is none or it is stale): what ``mobilenets cost --latency`` shows."""
    return predict_latency(report, load_calibration(runtime, threads, say=say))
