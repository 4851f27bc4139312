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

import contextlib
import datetime
import inspect
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import least_squares

from mobilenets.cost import CostReport, LayerCost, profile_model
from mobilenets.deploy.runtime import DEFAULT_PROVIDER, create_session, short_provider_name
from mobilenets.errors import MobileNetError
from mobilenets.io import atomic_write_json
from mobilenets.latency import (
    CALIBRATION_FORMAT,
    FUSED_ACTIVATIONS,
    FUSED_KINDS,
    IN_CONTEXT_KINDS,
    LATENCY_KINDS,
    MEMORY_ONLY_KINDS,
    WARM_KIND,
    Calibration,
    LatencyPrediction,
    Roofline,
    bytes_moved,
    latency_kinds,
    macs_done,
    numel,
    pointwise_kind,
    predict_latency,
)
from mobilenets.models import create_model, get_model_factory, list_models

# Runtimes the latency model can be calibrated for: the name users type -> provider. Only
# runtimes whose profiler reports per-kernel times can be calibrated layer by layer.
RUNTIMES = {"onnxruntime": DEFAULT_PROVIDER}
DEFAULT_RUNTIME = "onnxruntime"
OPSET = 18
# IR version 8 is what opset 18 needs; the onnx package would write its newest, which an older
# onnxruntime refuses ("Unsupported model IR version").
IR_VERSION = 8
# Where the registered models' layer shapes are sampled: the papers' width and resolution dials.
SAMPLE_WIDTHS = (0.35, 0.75, 1.4)
SAMPLE_RESOLUTIONS = (96, 224)
PER_KIND = 14
CHAIN_LENGTH = 24
OVERHEAD_REPEATS = 9  # splits of the runtime overhead, the median kept
OVERHEAD_EVERY = 10  # a calibration makes one split after every this many samples
CONTEXT_REPEATS = 3  # interleaved sessions of each in-place sample's two graphs per pass
# passes over all the samples: every sample keeps its fastest pass (one pass let a slow spell
# set a kind's rates: a 2-thread calibration fitted small-K pointwise layers at 21 GB/s against
# 27-28 in others, and priced the separable VGG 0.35 at 224 px 41% slow)
CALIBRATION_ROUNDS = 2
# and more, up to this many, while the last pass sped up over SETTLED_SHARE of the samples by
# over SETTLED_SPEEDUP: a slow spell of the machine can outlast two passes (one fitted the
# memory rates of small-K pointwise layers, SE gates and SiLU at 19-22 GB/s against 28-56 in
# the run before, and priced the separable VGG 0.35 at 224 px 48% slow with 2 threads)
MAX_CALIBRATION_ROUNDS = 4
SETTLED_SHARE = 0.1
SETTLED_SPEEDUP = 0.1
ERROR_FLOOR_S = 1e-6  # fit errors of samples quicker than this are relative to it
CACHE_ENV = "MOBILENETS_CACHE"


# --------------------------------------------------------------------------- the machine


def machine_fingerprint() -> str:
    """What makes timings comparable: the CPU model, the number of CPUs, the architecture."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.machine()}"


def check_runtime(runtime: str) -> str:
    """The provider of ``runtime``, or one line saying which runtimes can be calibrated."""
    if runtime not in RUNTIMES:
        raise MobileNetError(
            f"cannot calibrate for runtime {runtime!r}: the latency model needs per-layer "
            f"kernel times, which these runtimes report: {', '.join(RUNTIMES)}"
        )
    if RUNTIMES[runtime] not in ort.get_available_providers():
        raise MobileNetError(f"{runtime} is not installed here ({RUNTIMES[runtime]} is missing)")
    return RUNTIMES[runtime]


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MobileNetError(f"threads must be 0 (the runtime's default) or more, got {threads!r}")
    return threads


def cache_dir() -> Path:
    """``$MOBILENETS_CACHE``, else ``$XDG_CACHE_HOME/mobilenets``, else ``~/.cache/mobilenets``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mobilenets"


def cache_path(runtime: str = DEFAULT_RUNTIME, threads: int = 0) -> Path:
    provider = short_provider_name(check_runtime(runtime)).lower()
    return cache_dir() / "latency" / f"{runtime}-{provider}-threads{threads}.json"


def stale_reason(calibration: Calibration) -> str | None:
    """Why a cached calibration cannot price this machine and runtime, or ``None``."""
    if calibration.format != CALIBRATION_FORMAT:
        return f"it has format {calibration.format}, this version reads {CALIBRATION_FORMAT}"
    if calibration.machine != machine_fingerprint():
        return f"it was made on another machine ({calibration.machine})"
    if calibration.runtime_version != ort.__version__:
        return (
            f"it was made with {calibration.runtime} {calibration.runtime_version}, "
            f"this is {ort.__version__}"
        )
    missing = set(LATENCY_KINDS) - set(calibration.rooflines)
    if missing:
        return f"it has no rates for {', '.join(sorted(missing))}"
    return None


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MobileNetError(f"cannot read the calibration {path}: {e}") from None
    return Calibration.from_json(data, str(path))


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


# --------------------------------------------------------------------------- the samples


@dataclass(frozen=True)
class Sample:
    """One layer to time: its traced row and latency kind, and what it measured."""

    row: LayerCost
    kind: str
    seconds: float = math.nan
    block: int = 1  # the runtime's channel block: the work is priced padded to it
    nodes: int = 1  # the runtime's nodes it ran (an in-place gate's layout conversions too)
    scatter_s: float = 0.0  # the standard error of ``seconds`` where it is a median (0: unknown)

    @property
    def macs(self) -> float:
        return macs_done(self.row, self.kind, self.block)

    @property
    def bytes(self) -> float:
        return bytes_moved(self.row, self.kind, block=self.block)

    def key(self) -> tuple:
        return (self.kind, self.row.input_shape, self.row.output_shape, self.row.macs)


def registry_samples(
    models: Iterable[str] | None = None,
    widths: Sequence[float] = SAMPLE_WIDTHS,
    resolutions: Sequence[int] = SAMPLE_RESOLUTIONS,
) -> list[Sample]:
    """Every distinct pricable layer of the registered models at these widths and resolutions.

    A combination a family refuses (a resolution below its stride) is skipped.
    """
    seen: dict[tuple, Sample] = {}
    for name in list_models() if models is None else models:
        for width in widths if takes_width(name) else (None,):
            for resolution in resolutions:
                kwargs = {} if width is None else {"width_mult": width}
                try:
                    report = profile_model(create_model(name, **kwargs), resolution)
                except MobileNetError:
                    continue
                for row, kind in zip(report.layers, latency_kinds(report.layers), strict=True):
                    if kind is not None:
                        sample = Sample(row, kind)
                        seen.setdefault(sample.key(), sample)
    found = {s.kind for s in seen.values()}
    return list(seen.values()) + [s for s in synthetic_samples() if s.kind not in found]


def takes_width(name: str) -> bool:
    """Whether the family ``name`` has a width multiplier (EfficientNet and MobileNetV4 fix
    their widths in their tables)."""
    return "width_mult" in inspect.signature(get_model_factory(name)).parameters


def synthetic_samples() -> list[Sample]:
    """Squeeze-and-excitation gates, 5x5 depthwise convolutions and SiLU on MobileNetV3-like
    feature maps, VGG-like 3x3 convolutions and 2x2 max poolings, for the kinds that no model
    being sampled has, so that every kind is calibrated whatever models are sampled."""
    gates = [(16, 56), (72, 28), (96, 14), (120, 28), (240, 14), (576, 7), (960, 7)]
    pools = [(16, 112), (32, 96), (64, 56), (128, 28), (256, 14), (512, 8)]
    convs = [
        _map_sample(f"conv{c}x{h}", "standard", "standard K>=64", c, h, 9 * c, 9 * c * c)
        for c, h in pools
    ]
    depthwise = [
        _map_sample(f"dw5x5_{c}x{h}", "depthwise", "depthwise 5x5+", c, h, 25, 25 * c)
        for c, h in gates
    ]
    silu = [_map_sample(f"silu{c}x{h}", "activation", "silu", c, h, op="SiLU") for c, h in gates]
    fused = [
        replace(sample, row=replace(sample.row, op=op), kind=kind)
        for op, kind in FUSED_ACTIVATIONS.items()
        for sample in silu
    ]
    return (
        convs
        + depthwise
        + silu
        + fused
        + [
            Sample(LayerCost(f"se{c}x{h}", "pool", (1, c, h, h), (1, c, 1, 1), 0, 0, c), "se")
            for c, h in gates
        ]
        + [
            Sample(
                LayerCost(f"max{c}x{h}", "pool", (1, c, h, h), (1, c, h // 2, h // 2), 0, 0, c),
                "max pool",
            )
            for c, h in pools
        ]
    )


def _map_sample(
    name: str,
    row_kind: str,
    kind: str,
    channels: int,
    size: int,
    macs_per_value: int = 0,
    params: int = 0,
    op: str = "",
) -> Sample:
    """A synthetic layer that keeps its ``channels`` x ``size`` x ``size`` feature map."""
    shape = (1, channels, size, size)
    values = channels * size * size
    row = LayerCost(name, row_kind, shape, shape, macs_per_value * values, params, values, op=op)
    return Sample(row, kind)


def spread(samples: Sequence[Sample], per_kind: int) -> list[Sample]:
    """Up to ``per_kind`` samples of each kind, evenly spaced over its range of work."""
    chosen = []
    for kind in LATENCY_KINDS:
        of_kind = sorted(
            (s for s in samples if s.kind == kind), key=lambda s: (s.row.macs, s.bytes)
        )
        if len(of_kind) <= per_kind:
            chosen += of_kind
            continue
        picks = np.linspace(0, len(of_kind) - 1, per_kind).round().astype(int)
        chosen += [of_kind[i] for i in sorted(set(picks.tolist()))]
    return chosen


# --------------------------------------------------------------------------- one-layer graphs


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def channel_block() -> int:
    """onnxruntime's channel block on this CPU: its convolutions run in a layout of 16-channel
    blocks with AVX-512, 8-channel blocks with AVX2, and without blocking otherwise."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 1
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache (Linux reports it; 32 MiB where it does not)."""
    for index in (3, 2):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    return 32 * 2**20


def cold_copies(sample: Sample) -> int:
    """How many copies of a fully connected layer, each with its own weights, a one-layer
    graph runs so that its weights come from memory rather than cache, as in a network where
    every other layer has passed through the cache since (a 5 MB classifier measured 3.6x
    slower inside MobileNetV2 than alone with warm weights)."""
    if sample.kind != "fc":
        return 1
    return copies_past_cache(sample.row.params * 4)


def copies_past_cache(weight_bytes: int, at_least: int = 1) -> int:
    """How many side-by-side copies of a layer with ``weight_bytes`` of weights pass twice the
    last-level cache (at most 64), so that each call finds its weights in memory."""
    weights = max(weight_bytes, 1)
    return int(min(64, max(at_least, math.ceil(2 * last_level_cache_bytes() / weights))))


def layer_graph(sample: Sample, seed: int = 0) -> onnx.ModelProto:
    """A one-layer ONNX model computing what ``sample``'s layer computes, as exported.

    Convolutions carry a fused ReLU, which costs nothing (ReLU6's and HardSwish's extra pass
    is a kind of its own); squeeze-and-excitation, SiLU, ReLU6 and HardSwish are measured in
    place, between two convolutions (:func:`context_graph`). The kernel size, stride and
    groups are read back from the traced shapes and mult-adds (all the models here pad
    "same"). A fully connected layer runs :func:`cold_copies` times side by side on the
    same input, each copy with its own weights and output.
    """
    if sample.kind in IN_CONTEXT_KINDS:
        return context_graph(sample, seed=seed)
    copies = cold_copies(sample)
    if copies > 1:
        return _side_by_side([_one_layer(sample, seed + i) for i in range(copies)])
    return _one_layer(sample, seed)


def _one_layer(sample: Sample, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    row = sample.row
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(row.input_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(row.output_shape))
    inits: list[TensorProto] = []
    if row.kind == "linear":
        k, n = row.input_shape[-1], row.output_shape[-1]
        inits = [
            _initializer("w", rng.standard_normal((n, k)) * 0.01),
            _initializer("b", np.zeros(n)),
        ]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="layer", transB=1)]
    elif sample.kind == "global pool":
        inits = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")]
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="layer", keepdims=1)]
    elif sample.kind == "max pool":
        k = row.input_shape[2] // row.output_shape[2]
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[k, k])]
    else:
        nodes, inits = _conv_nodes(row, rng)
    graph = helper.make_graph(nodes, "layer", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def _side_by_side(models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph running ``models`` (one-layer graphs on the same input ``x``) side by side,
    the names of each copy's weights, nodes and output suffixed with its index."""
    nodes, inits, outputs = [], [], []
    for i, model in enumerate(models):
        for init in model.graph.initializer:
            init.name = f"{init.name}{i}"
            inits.append(init)
        for node in model.graph.node:
            node.name = f"{node.name}{i}"
            node.input[:] = [n if n == "x" else f"{n}{i}" for n in node.input]
            node.output[:] = [f"{n}{i}" for n in node.output]
            nodes.append(node)
        output = model.graph.output[0]
        output.name = f"{output.name}{i}"
        outputs.append(output)
    graph = helper.make_graph(nodes, "side_by_side", [models[0].graph.input[0]], outputs, inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def _conv_nodes(row: LayerCost, rng: np.random.Generator) -> tuple[list, list]:
    c_in, c_out = row.input_shape[1], row.output_shape[1]
    groups = c_in if row.kind == "depthwise" else 1
    k = max(1, round(math.sqrt(row.macs / (numel(row.output_shape) * (c_in // groups)))))
    stride = max(1, -(-row.input_shape[2] // row.output_shape[2]))
    weight = rng.standard_normal((c_out, c_in // groups, k, k)) * (1 / math.sqrt(k * k * c_in))
    inits = [_initializer("w", weight), _initializer("b", np.zeros(c_out))]
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["c"],
        name="layer",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
        group=groups,
    )
    return [conv, helper.make_node("Relu", ["c"], ["y"], name="act")], inits


def context_graph(sample: Sample, with_layer: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``sample``'s layer between two 1x1 convolutions, as it sits in a network, or (without
    it) the two convolutions alone: the difference is what the layer costs in place.

    A squeeze-and-excitation gate or a SiLU does not run in onnxruntime's blocked layout, so in
    a network it brings layout conversions with it, which a one-layer graph cannot show (its
    input and output are in the plain layout anyway). A ReLU6 fused into a convolution costs a
    pass over its output that a ReLU does not (a 16-channel 224 x 224 depthwise layer: 255 us
    with ReLU6, 181 us with ReLU), so its sample is the first convolution ending in ReLU6
    against the same ending in ReLU; HardSwish's likewise.
    """
    rng = np.random.default_rng(seed)
    shape = list(sample.row.input_shape)
    c = shape[1]
    inits = [
        _initializer("w_pre", rng.standard_normal((c, c, 1, 1)) / math.sqrt(c)),
        _initializer("w_post", rng.standard_normal((c, c, 1, 1)) / math.sqrt(c)),
        _initializer("lo", np.array(0.0)),
        _initializer("hi", np.array(6.0)),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w_pre"], ["p"], name="pre")]
    if sample.kind == "relu6" and with_layer:
        nodes.append(helper.make_node("Clip", ["p", "lo", "hi"], ["m"], name="layer"))
    elif sample.kind == "hardswish" and with_layer:
        nodes.append(helper.make_node("HardSwish", ["p"], ["m"], name="layer"))
    else:
        nodes.append(helper.make_node("Relu", ["p"], ["m"], name="pre_act"))
    middle = "m"
    if with_layer and sample.kind == "se":
        nodes += [
            helper.make_node("ReduceMean", ["m", "axes"], ["g"], name="layer", keepdims=1),
            helper.make_node("Mul", ["m", "g"], ["l"], name="scale"),
        ]
        middle = "l"
    elif with_layer and sample.kind == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["m"], ["s"], name="sigmoid"),
            helper.make_node("Mul", ["m", "s"], ["l"], name="layer"),
        ]
        middle = "l"
    nodes += [
        helper.make_node("Conv", [middle, "w_post"], ["q"], name="post"),
        helper.make_node("Relu", ["q"], ["y"], name="post_act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "in_context", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def chain_graph(length: int, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """``length`` tiny depthwise convolutions in a row: almost nothing but per-node overhead."""
    weight = np.full((channels, 1, 3, 3), 1 / 9)
    inits = [_initializer("w", weight)]
    nodes, prev = [], "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Conv", [prev, "w"], [out], kernel_shape=[3, 3], pads=[1] * 4, group=channels
            )
        )
        prev = out
    shape = [1, channels, size, size]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Profile:
    """One graph's fastest wall time per call and fastest kernel time per node, in seconds,
    nodes in execution order as ``(name, op type, seconds)``, and each profiled run's kernel
    time, layout conversions left out (``runs``) and counted (``runs_all``)."""

    wall_s: float
    nodes: list[tuple[str, str, float]]
    runs: tuple[float, ...] = ()
    runs_all: tuple[float, ...] = ()

    def kernel_s(self, skip_reorders: bool = True) -> float:
        return sum(s for _, op, s in self.nodes if not (skip_reorders and op.startswith("Reorder")))

    def fastest_run_s(self, skip_reorders: bool = True) -> float:
        """The kernel time of the fastest run. Where the nodes' times vary from run to run
        (weights streamed from memory) this is what a fastest call sees, and the sum of the
        nodes' fastest times is below it: each node's luckiest run is a different one."""
        runs = self.runs if skip_reorders else self.runs_all
        return min(runs) if runs else self.kernel_s(skip_reorders)


def profile_onnx(
    path: str | os.PathLike[str],
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    budget_s: float = 0.1,
    min_runs: int = 5,
    max_runs: int = 60,
    warmup: int = 3,
    wall: bool = True,
) -> Profile:
    """Run an ONNX file under the profiler for the kernel time of each node and, with
    ``wall``, in a plain session for the wall time per call (the profiler's own bookkeeping
    would inflate it); keep the fastest of each."""
    feed = _random_feed(path)
    walls, runs = [math.nan], min_runs
    with tempfile.TemporaryDirectory() as tmp:
        profiled = create_session(path, threads or None, provider, profile_prefix=f"{tmp}/p")
        for _ in range(warmup):
            profiled.run(None, feed)
        start = time.perf_counter()
        profiled.run(None, feed)
        one = max(time.perf_counter() - start, 1e-6)
        runs = int(min(max_runs, max(min_runs, budget_s / (2 if wall else 1) / one)))
        for _ in range(runs):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    if wall:
        plain = create_session(path, threads or None, provider)
        for _ in range(warmup):
            plain.run(None, feed)
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            plain.run(None, feed)
            walls.append(time.perf_counter() - start)
    times, ops = _node_times(events)
    return Profile(
        min(walls),
        _fastest_nodes(times, ops, skip_runs=warmup + 1),
        _run_kernel_s(times, ops, skip_runs=warmup + 1),
        _run_kernel_s(times, ops, skip_runs=warmup + 1, skip_reorders=False),
    )


def _random_feed(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A batch of one for the graph's input (a free batch axis taken as 1)."""
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    return {graph_input.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _node_times(events: list[dict]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Each node's kernel time in every run (in run order) and its op type; the dicts keep
    the order of the first run."""
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        times.setdefault(name, []).append(event["dur"] * 1e-6)
        ops[name] = event.get("args", {}).get("op_name", "")
    return times, ops


def _fastest_nodes(
    times: dict[str, list[float]], ops: dict[str, str], skip_runs: int
) -> list[tuple[str, str, float]]:
    """Each node's fastest kernel time over the profiled runs after ``skip_runs``."""
    return [(name, ops[name], min(ts[skip_runs:] or ts)) for name, ts in times.items()]


def _run_kernel_s(
    times: dict[str, list[float]],
    ops: dict[str, str],
    skip_runs: int,
    skip_reorders: bool = True,
) -> tuple[float, ...]:
    """Each profiled run's kernel time after ``skip_runs``, layout conversions left out unless
    ``skip_reorders`` is false (every node runs once per call, so a node's i-th time belongs to
    run i)."""
    kept = [
        ts for name, ts in times.items() if not (skip_reorders and ops[name].startswith("Reorder"))
    ]
    if not kept:
        return ()
    runs = min(len(ts) for ts in kept)
    start = skip_runs if runs > skip_runs else 0
    return tuple(sum(ts[i] for ts in kept) for i in range(start, runs))


def measure_samples(
    samples: Sequence[Sample],
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    budget_s: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    rounds: int = CALIBRATION_ROUNDS,
    max_rounds: int = MAX_CALIBRATION_ROUNDS,
    between: Callable[[], None] | None = None,
) -> tuple[list[Sample], int]:
    """Time each sample's one-layer graph; its time is the kernel time of its own nodes.

    Every sample is timed once in each pass over all of them, in :func:`interleaved` order, as
    the benchmarks time whole models: a slow spell then slows one timing of a layer, not all.
    A one-layer graph keeps its fastest time. An in-place gate or SiLU is the difference of its
    two graphs' fastest times, with and without it. A pass fused into a convolution (ReLU6,
    HardSwish) changes that kernel's time by less than the fastest times scatter (from them,
    ReLU6 came out free and MobileNetV2 up to 13% fast with 2 threads), so it is the median of
    its pairs' differences over all passes, with their scatter.

    After ``rounds`` passes, more are made, up to ``max_rounds``, while a pass still sped up
    more than :data:`SETTLED_SHARE` of the samples by more than :data:`SETTLED_SPEEDUP`: the
    machine was slow for part of the passes before, and the fastest times have not settled.
    ``between`` is called after every :data:`OVERHEAD_EVERY` samples, to spread another
    measurement over the passes. Returns the samples in the order given and the number of
    passes made.
    """
    best: dict[int, list[float]] = {}
    nodes: dict[int, list[int]] = {}
    added: dict[int, list[float]] = {}
    done, turn, planned = 0, 0, rounds
    with tempfile.TemporaryDirectory() as tmp:
        while turn < planned:
            sped_up = 0
            for i in interleaved(samples, _pass_start(turn)):
                sample = samples[i]
                path = Path(tmp) / f"layer{i}.onnx"
                if sample.kind in IN_CONTEXT_KINDS:
                    times, diffs, counts = _in_context_pairs(
                        sample, path, provider, threads, budget_s, seed=i
                    )
                    added.setdefault(i, []).extend(diffs)
                    nodes.setdefault(i, []).extend(counts)
                else:
                    if not path.exists():
                        onnx.save(layer_graph(sample, seed=i), str(path))
                    profile = profile_onnx(path, provider, threads, budget_s, wall=False)
                    times = (profile.fastest_run_s() / cold_copies(sample),)
                old = best.get(i, [math.inf] * len(times))
                sped_up += turn > 0 and any(
                    t < (1 - SETTLED_SPEEDUP) * o for t, o in zip(times, old, strict=True)
                )
                best[i] = [min(t, o) for t, o in zip(times, old, strict=True)]
                done += 1
                if between is not None and done % OVERHEAD_EVERY == 0:
                    between()
                if progress is not None:
                    progress(done, planned * len(samples))
            turn += 1
            if turn == planned and turn < max_rounds and sped_up > SETTLED_SHARE * len(samples):
                planned += 1

    def measured(i: int, sample: Sample) -> Sample:
        if sample.kind not in IN_CONTEXT_KINDS:  # a one-layer graph
            return replace(sample, seconds=best[i][0], nodes=1)
        runtime_nodes = max(0, round(float(np.median(nodes[i]))))
        if sample.kind in FUSED_KINDS:
            seconds, scatter = float(np.median(added[i])), standard_error(added[i])
            return replace(sample, seconds=seconds, nodes=runtime_nodes, scatter_s=scatter)
        return replace(sample, seconds=best[i][0] - best[i][1], nodes=runtime_nodes)

    return [measured(i, sample) for i, sample in enumerate(samples)], turn


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the median of ``values``, from their median absolute deviation
    (a slow spell's outlier does not widen it)."""
    deviation = float(np.median(np.abs(np.asarray(values) - np.median(values))))
    return 1.4826 * deviation * math.sqrt(math.pi / 2 / max(len(values), 1))


def _pass_start(turn: int) -> float:
    """Where pass ``turn`` begins each kind's queue: 0, 1/2, 1/4, 3/4, 1/8, ... (each pass
    halfway between earlier ones)."""
    start, weight = 0.0, 0.5
    while turn:
        start += weight * (turn & 1)
        turn >>= 1
        weight /= 2
    return start


def interleaved(samples: Sequence[Sample], start: float = 0.0) -> list[int]:
    """The indices of ``samples`` taking one of each kind in turn (round robin), each kind's
    in the order given but begun ``start`` (a fraction) of the way along and wrapped round.

    A slow spell of a shared machine then falls on a few samples of many kinds, which the
    soft-L1 fit discounts, rather than on every sample of one kind: timed kind by kind, one
    spell over the SE samples fitted the gate at 7.7 GB/s against 21 in the run before, and
    priced EfficientNet-B0 at 224 px 47% slow with 2 threads. Each pass begins elsewhere, so
    that the largest samples of every kind, which set the fitted rates, are not timed at the
    same moment of every pass: a spell at the end of the second of two passes once slowed the
    largest gate 6x and the largest SiLU 40x, and the gate was fitted at 21.6 GB/s (28-30
    when no spell fell on it).
    """
    by_kind: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_kind.setdefault(sample.kind, []).append(i)
    queues = []
    for queue in by_kind.values():
        first = int(start * len(queue)) % len(queue)
        queues.append(queue[first:] + queue[:first])
    order = []
    for turn in range(max((len(q) for q in queues), default=0)):
        order += [q[turn] for q in queues if turn < len(q)]
    return order


def _in_context_pairs(
    sample: Sample, path: Path, provider: str, threads: int, budget_s: float, seed: int
) -> tuple[tuple[float, float], list[float], list[int]]:
    """The layer timed in its context against the context alone, in :data:`CONTEXT_REPEATS`
    interleaved pairs of sessions: the fastest kernel time of each graph, layout conversions
    included; what the layer adds to the kernels in each pair; and how many nodes it adds to
    the runtime's graph (a squeeze-and-excitation gate: its pooling, its scale and the
    conversions out of and back into the blocked layout).

    Each graph's fastest time lets a slow spell through neither way: a spell only slows, so
    the fastest of the other sessions stands. The median of the pairs' differences over two
    passes let one through when it covered a whole pass (the largest gate timed 1.1-1.9 ms
    against 0.2 and fitted at 21.6 GB/s), and that of one pass did when it covered a few
    pairs (SiLU fitted at 5.9 GB/s, EfficientNet-B0 at 224 px priced 123% slow). A
    difference can come out at or below zero for a pass too small to see against the noise.
    """
    paths = [path.with_name(f"{path.stem}_{i}.onnx") for i in range(2)]
    for with_layer, graph_path in zip((True, False), paths, strict=True):
        if not graph_path.exists():
            onnx.save(context_graph(sample, with_layer, seed), str(graph_path))
    best, added, nodes = [math.inf, math.inf], [], []
    for _ in range(CONTEXT_REPEATS):
        profiles = [profile_onnx(p, provider, threads, budget_s, wall=False) for p in paths]
        for j, profile in enumerate(profiles):
            best[j] = min(best[j], profile.fastest_run_s(skip_reorders=False))
        added.append(profiles[0].kernel_s(False) - profiles[1].kernel_s(False))
        nodes.append(len(profiles[0].nodes) - len(profiles[1].nodes))
    return (best[0], best[1]), added, nodes


def measure_overheads(
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    length: int = CHAIN_LENGTH,
    channels: int = 8,
    size: int = 8,
    repeats: int = OVERHEAD_REPEATS,
) -> tuple[float, float]:
    """The runtime's seconds between kernels and per call, from chains of 1 and ``length``
    tiny layers (``channels`` x ``size`` x ``size``): what the wall time adds to the kernel
    times, split into a per-node and a fixed part; the median of ``repeats`` splits made one
    after another (a calibration spreads its splits over its passes instead)."""
    with overhead_chains(length, channels, size) as chains:
        return median_split([overhead_split(chains, provider, threads) for _ in range(repeats)])


@contextlib.contextmanager
def overhead_chains(
    length: int = CHAIN_LENGTH, channels: int = 8, size: int = 8
) -> Iterator[dict[int, Path]]:
    """Chains of 1 and ``length`` tiny layers written to a temporary folder, by length."""
    with tempfile.TemporaryDirectory() as tmp:
        chains = {}
        for n in (1, length):
            chains[n] = Path(tmp) / f"chain{n}.onnx"
            onnx.save(chain_graph(n, channels, size), str(chains[n]))
        yield chains


def overhead_split(
    chains: dict[int, Path], provider: str = DEFAULT_PROVIDER, threads: int = 0
) -> tuple[float, float]:
    """One split of the runtime overhead, per node and per call, from the shortest and the
    longest of ``chains`` (:func:`overhead_chains`).

    One split takes a fraction of a second, and with 2 threads one came out anywhere from -3.0
    to -4.9 us per node; a network of 118 runtime nodes (MobileNetV3-Small 0.35 at 96 px) turns
    that spread into a quarter of its latency."""
    extra, nodes = {}, {}
    for n, path in chains.items():
        profile = profile_onnx(path, provider, threads, budget_s=0.2, min_runs=20)
        extra[n] = profile.wall_s - profile.kernel_s(skip_reorders=False)
        nodes[n] = len(profile.nodes)
    short, long = min(chains), max(chains)
    per_node = (extra[long] - extra[short]) / max(nodes[long] - nodes[short], 1)
    return per_node, max(0.0, extra[short] - per_node * nodes[short])


def median_split(splits: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The median per-node and per-call overheads of ``splits``."""
    return float(np.median([s[0] for s in splits])), float(np.median([s[1] for s in splits]))


WEIGHT_CACHE_COPIES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)  # 4 MiB layers side by side
# passes over those copies, each point's median kept: one pass put the cache anywhere from 10
# to 18 MiB between calibrations on the same machine
CACHE_PASSES = 3
CACHE_GRID = np.geomspace(2**19, 2**29, 61)  # candidate cache sizes, 0.5 MiB to 512 MiB


def measure_weight_cache(
    provider: str = DEFAULT_PROVIDER, threads: int = 0
) -> tuple[float, float, float]:
    """How many bytes one call may pass through the cache and still find all its weights
    there on the next, from how many it finds none, and the rate at which weights that it
    does not keep stream from memory (bytes per second).

    A 1024 x 1024 fully connected layer (4 MiB of weights) runs as 1 to 32 copies side by side,
    each with its own weights: while all copies fit in cache every call finds its weights
    there; past that, the time per copy climbs to the memory-bound rate. The time per copy is
    fitted as ``warm * f + cold * (1 - f)`` with ``f`` falling linearly from 1 at ``lo`` bytes
    to 0 at ``hi`` (:meth:`~mobilenets.latency.Calibration.warm_fraction`), ``lo`` and ``hi``
    searched over a grid, ``warm`` and ``cold`` by least squares for each pair; 4 MiB over
    ``cold`` is the streaming rate. Each graph's time is its fastest call's
    (:meth:`Profile.fastest_run_s`), the median over :data:`CACHE_PASSES` passes.
    """
    n = 1024
    row = LayerCost("fc", "linear", (1, n), (1, n), n * n, n * n + n, n)
    weights = np.array([copies * row.params * 4 for copies in WEIGHT_CACHE_COPIES], dtype=float)
    per_copy = np.zeros((CACHE_PASSES, len(WEIGHT_CACHE_COPIES)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for copies in WEIGHT_CACHE_COPIES:
            paths.append(Path(tmp) / f"fc{copies}.onnx")
            layers = [_one_layer(Sample(row, "fc"), seed) for seed in range(copies)]
            onnx.save(_side_by_side(layers) if copies > 1 else layers[0], str(paths[-1]))
        for i in range(CACHE_PASSES):
            for j, (copies, path) in enumerate(zip(WEIGHT_CACHE_COPIES, paths, strict=True)):
                profile = profile_onnx(path, provider, threads, budget_s=0.1, wall=False)
                per_copy[i, j] = profile.fastest_run_s() / copies
    lo, hi, _, cold = fit_weight_cache(weights, np.median(per_copy, axis=0))
    return lo, hi, row.params * 4 / cold


# Pointwise layers (in, out, map size) whose weights, 0.4 to 3.5 MiB, are timed warm and cold:
# the shapes of the late layers of large networks at low resolution, which stream the most
OVERLAP_LAYERS = ((192, 576, 6), (256, 512, 6), (576, 576, 3), (384, 1152, 3), (960, 960, 3))
OVERLAP_GRID = np.geomspace(1.0, 32.0, 41)  # candidate exponents; 32 is max() in all but name


def measure_stream_overlap(
    stream_bytes_per_s: float, provider: str = DEFAULT_PROVIDER, threads: int = 0
) -> float:
    """How far a convolution overlaps streaming its weights from memory with its work.

    Each layer of :data:`OVERLAP_LAYERS` runs alone (its weights warm) and as copies side by
    side with their own weights, past twice the last-level cache (cold). The cold time is
    fitted as ``(warm**p + stream**p) ** (1 / p)`` with ``stream`` its weight bytes at the
    streaming rate: p = 1 is no overlap (the times add), a large p full overlap (the larger
    wins). Each time is a fastest call's, as a whole network's latency is: the sum of each
    copy's fastest time (each from a different call) read full overlap where the fastest
    call's read p = 2.8. One-layer graphs of EfficientNet-B3's late layers fell in between
    (1.29 MB: warm 57 us, stream 80 us, cold 108 us).
    """
    warm, stream, cold = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for c_in, c_out, size in OVERLAP_LAYERS:
            row = LayerCost(
                "pw",
                "pointwise",
                (1, c_in, size, size),
                (1, c_out, size, size),
                c_in * c_out * size * size,
                c_in * c_out + c_out,
                c_out * size * size,
            )
            sample = Sample(row, pointwise_kind(c_in))
            weight_bytes = row.params * 4
            copies = copies_past_cache(weight_bytes, at_least=2)
            times = []
            for n in (1, copies):
                path = Path(tmp) / f"overlap{n}.onnx"
                layers = [_one_layer(sample, seed) for seed in range(n)]
                onnx.save(_side_by_side(layers) if n > 1 else layers[0], str(path))
                profile = profile_onnx(path, provider, threads, budget_s=0.1, wall=False)
                times.append(profile.fastest_run_s() / n)
            warm.append(times[0])
            cold.append(times[1])
            stream.append(weight_bytes / stream_bytes_per_s)
    return fit_stream_overlap(np.array(warm), np.array(stream), np.array(cold))


def fit_stream_overlap(warm: np.ndarray, stream: np.ndarray, cold: np.ndarray) -> float:
    """The exponent p of :func:`measure_stream_overlap` that best explains ``cold``; 0 (the
    max, full overlap) when the grid's largest does, so that full overlap prices exactly as
    ``max`` rather than a hair above it."""
    errors = [
        float(np.sum(np.log((warm**p + stream**p) ** (1 / p) / cold) ** 2)) for p in OVERLAP_GRID
    ]
    best = int(np.argmin(errors))
    return 0.0 if best == len(OVERLAP_GRID) - 1 else float(OVERLAP_GRID[best])


def fit_weight_cache(weights: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float, float]:
    """The bytes up to which ``seconds`` per copy (at ``weights`` bytes in all) are warm and
    from which they are cold, with the fitted warm and cold seconds per copy."""
    best = (float(CACHE_GRID[0]), float(CACHE_GRID[0]), float(seconds.min()), float(seconds.max()))
    best_error = math.inf
    for i, lo in enumerate(CACHE_GRID):
        for hi in CACHE_GRID[i + 1 :]:
            warm_share = np.clip((hi - weights) / (hi - lo), 0.0, 1.0)
            design = np.stack([warm_share, 1 - warm_share], axis=1)
            (warm, cold), *_ = np.linalg.lstsq(design, seconds, rcond=None)
            if warm <= 0 or cold <= 0:
                continue
            error = float(np.sum(np.log(design @ np.array([warm, cold]) / seconds) ** 2))
            if error < best_error:
                best, best_error = (float(lo), float(hi), float(warm), float(cold)), error
    return best


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
    (0: the runtime's default). ``budget_s`` is roughly the seconds spent timing each layer."""
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
    cache, cold, stream = measure_weight_cache(provider, threads)
    overlap = measure_stream_overlap(stream, provider, threads)
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


def predict_cached(
    report: CostReport,
    runtime: str = DEFAULT_RUNTIME,
    threads: int = 0,
    say: Callable[[str], None] | None = None,
) -> LatencyPrediction:
    """``report``'s predicted latency with this machine's cached calibration (made first if
    there is none or it is stale): what ``mobilenets cost --latency`` shows."""
    return predict_latency(report, load_calibration(runtime, threads, say=say))
