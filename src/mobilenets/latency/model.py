"""Predicted latency: a per-layer roofline whose rates are measured on this machine.

Counted mult-adds mislead: a depthwise layer does ``f*f`` multiply-adds per value it loads and
a pointwise layer with few input channels not many more, so both wait on memory, while a wide
pointwise layer keeps the arithmetic units busy. The roofline model (Williams, Waterman and
Patterson, 2009) says how long each takes::

    time = max(mult-adds / compute rate, bytes moved / memory bandwidth) + overhead

whichever of arithmetic or memory traffic takes longer bounds the layer, and a fixed cost per
kernel call (thread-pool dispatch, the runtime's bookkeeping) comes on top. The rates differ
with what the layer does, so they are fitted per *latency kind*: standard convolutions,
depthwise ones by filter size, pointwise ones by their number of input channels K (the GEMM's inner
dimension: small K means little reuse of each loaded value), standard ones by the same K
(``c_in * f * f``: a stem on three colour channels is a thin GEMM), the squeeze-and-excitation
gate, fully connected layers (matrix-vector products, bound by loading their weights) and
pooling (global average pooling and max pooling apart: the runtime runs the first on the plain
layout after converting back to it, the second in its blocked one).
:mod:`mobilenets.latency.calibration` measures the rates once per machine and runtime.

The layers come from :func:`mobilenets.analysis.cost.profile_model`; BatchNorm and most activations
get no time of their own because deployed graphs fold and fuse them into the convolution before
them. SiLU is the exception: onnxruntime runs it as a kernel of its own (``QuickGelu``), priced
as the ``silu`` kind. ReLU6 and HardSwish are fused but not free: the kernel makes one more
pass over its output, priced as the ``relu6`` and ``hardswish`` kinds with no node of their own.

A runtime's blocked layout pads channels (onnxruntime's NCHWc: 16-channel blocks with
AVX-512), so layers are priced on their padded work (:func:`macs_done`,
:func:`bytes_moved`); and a fully connected layer's weights are cold or warm depending on
whether the whole network's weights stay cached between calls (``fc`` and ``fc warm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mobilenets.analysis.cost import CostReport, LayerCost, bytes_per_element
from mobilenets.errors import MobileNetError

CALIBRATION_FORMAT = 14  # bump when the kinds, the fitted quantities or their measuring change

POINTWISE_K_EDGES = (64, 256)  # pointwise kinds: K < 64, 64 <= K < 256, K >= 256
STANDARD_K_EDGE = 64  # standard kinds: K = c_in * f * f below 64 (a stem on RGB) or not
CONVOLUTION_KINDS = (
    "standard K<64",
    "standard K>=64",
    "depthwise 3x3",
    "depthwise 5x5+",
    "pointwise K<64",
    "pointwise K<256",
    "pointwise K>=256",
)
LATENCY_KINDS = (
    *CONVOLUTION_KINDS,
    "se",
    "fc",
    "fc warm",
    "global pool",
    "max pool",
    "silu",
    "relu6",
    "hardswish",
)
DEPTHWISE_KINDS = ("depthwise 3x3", "depthwise 5x5+")
# Kinds whose work is only data movement: no compute rate is fitted, the roofline is flat.
MEMORY_ONLY_KINDS = ("se", "global pool", "max pool", "silu", "relu6", "hardswish")
# Kinds calibrated in place between two convolutions (see calibrate.context_graph): what they
# cost a network includes the layout conversions or the extra pass they bring.
IN_CONTEXT_KINDS = ("se", "silu", "relu6", "hardswish")
# Activations onnxruntime fuses into the convolution before them, which still cost that kernel
# a pass over its output that ReLU does not: priced, but no node of their own. HardSwish
# (MobileNetV3's) added 1-1.5x what ReLU6 adds in place; left free, every V3 was priced fast.
FUSED_ACTIVATIONS = {"ReLU6": "relu6", "Hardswish": "hardswish"}
FUSED_KINDS = tuple(FUSED_ACTIVATIONS.values())
# Activations onnxruntime does not fuse into the convolution before them: SiLU (x * sigmoid(x),
# EfficientNet's) runs as a kernel of its own that reads and writes the whole feature map.
UNFUSED_ACTIVATIONS = ("SiLU",)
# A fully connected layer loads each weight once per call, so its time depends on where the
# weights are: "fc" is measured with them coming from memory, "fc warm" with them in cache.
# Which applies depends on the whole network: a model whose weights fit in the cache finds
# them there on the next call (MobileNetV3-Small 0.35 at 96 px: its classifier ran 3.3x
# faster than the memory-bound rate), a large one has evicted them by then.
WARM_KIND = "fc warm"


def pointwise_kind(k: int) -> str:
    """The latency kind of a 1x1 convolution with ``k`` input channels."""
    low, high = POINTWISE_K_EDGES
    if k < low:
        return "pointwise K<64"
    if k < high:
        return "pointwise K<256"
    return "pointwise K>=256"


def depthwise_kind(taps: int) -> str:
    """The latency kind of a depthwise convolution with ``taps`` (f*f) weights per channel: a
    5x5 filter does 25 multiply-adds per loaded value where a 3x3 does 9, and onnxruntime ran
    5x5 layers at 30-44 mult-adds per ns against 18-29 for 3x3 ones of the same shapes."""
    return "depthwise 3x3" if taps <= 9 else "depthwise 5x5+"


def standard_kind(k: int) -> str:
    """The latency kind of a standard convolution whose GEMM has inner dimension ``k``."""
    return "standard K<64" if k < STANDARD_K_EDGE else "standard K>=64"


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[2:]) if len(shape) == 4 else ()


def _is_vector(shape: tuple[int, ...]) -> bool:
    """A 4-D tensor with a 1x1 feature map: what a pooled squeeze or head works on."""
    return len(shape) == 4 and _spatial(shape) == (1, 1)


def _is_se_squeeze(layers: Sequence[LayerCost], i: int) -> bool:
    """Whether the global pooling at ``layers[i]`` is a squeeze-and-excitation gate, for
    networks whose gate :func:`~mobilenets.analysis.cost.profile_model` does not name ``se``.

    The gate pools the feature map to one value per channel, passes it through small layers on
    that 1x1 map, and multiplies the feature map by the result, so the first layer after the
    1x1 stretch takes a tensor of the pooled input's shape. A classifier's pooling instead
    ends in a flattened vector.
    """
    pooled_from = layers[i].input_shape
    for row in layers[i + 1 :]:
        if _is_vector(row.input_shape):
            continue
        return row.input_shape == pooled_from
    return False


def latency_kinds(layers: Sequence[LayerCost]) -> list[str | None]:
    """The latency kind of every traced layer, ``None`` for those a deployed graph fuses away
    (BatchNorm, activations, dropout, flatten) or that have no kernel worth pricing."""
    kinds: list[str | None] = []
    for i, row in enumerate(layers):
        kind: str | None = None
        if row.kind in ("standard", "grouped"):
            kind = standard_kind(row.macs // max(numel(row.output_shape), 1))
        elif row.kind == "depthwise":
            kind = depthwise_kind(row.macs // max(numel(row.output_shape), 1))
        elif row.kind == "pointwise":
            kind = "fc" if _is_vector(row.input_shape) else pointwise_kind(row.input_shape[1])
        elif row.kind == "linear":
            kind = "fc"
        elif row.kind == "se":  # the builder's gate: its pooling, its two 1x1 layers
            if row.macs:
                kind = "fc"
            elif _is_vector(row.output_shape) and not _is_vector(row.input_shape):
                kind = "se"
        elif row.kind == "pool" and _is_vector(row.output_shape):
            kind = "se" if _is_se_squeeze(layers, i) else "global pool"
        elif row.kind == "pool":
            kind = "max pool"
        elif row.kind == "activation" and row.op in UNFUSED_ACTIVATIONS:
            kind = "silu"
        elif row.kind == "activation" and row.op in FUSED_ACTIVATIONS:
            kind = FUSED_ACTIVATIONS[row.op]  # fused, but a pass over the output
        kinds.append(kind)
    return kinds


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


# Kinds a runtime runs in its channel-blocked layout (onnxruntime's NCHWc): their channels are
# padded to the block, and the padding is computed and moved like real channels.
BLOCKED_KINDS = (*CONVOLUTION_KINDS, "max pool")
STEM_CHANNELS = 4  # a stem's colour channels are read in the plain layout, not padded


def padded_channels(channels: int, block: int) -> int:
    """``channels`` as a blocked layout stores them: rounded up to a multiple of ``block``."""
    if block <= 1 or channels <= STEM_CHANNELS:
        return channels
    return -(-channels // block) * block


def _padding(row: LayerCost, kind: str, block: int) -> tuple[float, float, float]:
    """How much larger the input, the output and the work (mult-adds and weights alike) are
    once channels are padded: a depthwise filter grows with its channels, a dense one with
    its inputs and outputs."""
    if kind not in BLOCKED_KINDS or len(row.input_shape) != 4 or len(row.output_shape) != 4:
        return 1.0, 1.0, 1.0
    c_in, c_out = row.input_shape[1], row.output_shape[1]
    grow_in = padded_channels(c_in, block) / c_in
    grow_out = padded_channels(c_out, block) / c_out
    return grow_in, grow_out, grow_out if kind in DEPTHWISE_KINDS else grow_in * grow_out


def macs_done(row: LayerCost, kind: str, block: int = 1) -> float:
    """The mult-adds the runtime computes, padding included: a 24-channel pointwise layer in
    16-channel blocks computes 32 x 32 (onnxruntime ran it at the same rate per padded
    mult-add as a 16 x 16 one, and 1.8x slower per counted one)."""
    return row.macs * _padding(row, kind, block)[2]


def bytes_moved(row: LayerCost, kind: str, dtype: str = "fp32", block: int = 1) -> float:
    """Bytes a layer must read and write at least once: its input, its output, its weights,
    with their channels padded to ``block`` where the runtime blocks them.

    The squeeze-and-excitation gate reads the feature map twice (to pool it, then to scale
    it) and writes it once; its two small layers are priced as their own ``fc`` rows.
    """
    size = bytes_per_element(dtype)
    if kind == "se":
        return 3 * numel(row.input_shape) * size
    grow_in, grow_out, grow_work = _padding(row, kind, block)
    weights = row.params * grow_work
    return (numel(row.input_shape) * grow_in + numel(row.output_shape) * grow_out + weights) * size


@dataclass(frozen=True)
class Roofline:
    """One latency kind's fitted rates: mult-adds and bytes per second, seconds per call."""

    macs_per_s: float  # math.inf for memory-only kinds
    bytes_per_s: float
    overhead_s: float

    def compute_s(self, macs: int) -> float:
        return macs / self.macs_per_s

    def memory_s(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_s

    def seconds(self, macs: int, nbytes: int) -> float:
        return max(self.compute_s(macs), self.memory_s(nbytes)) + self.overhead_s

    def bound(self, macs: int, nbytes: int) -> str:
        """``"compute"`` or ``"memory"``: which side of the roofline the layer sits on (a
        memory-only kind priced as free is still ``"memory"``)."""
        return "compute" if self.compute_s(macs) > self.memory_s(nbytes) else "memory"

    def to_json(self) -> dict[str, float | None]:
        """No roof is written as null (plain JSON has no infinity): a memory-only kind has no
        compute roof, a pass priced free no memory roof either."""
        macs = None if math.isinf(self.macs_per_s) else self.macs_per_s
        nbytes = None if math.isinf(self.bytes_per_s) else self.bytes_per_s
        return {"macs_per_s": macs, "bytes_per_s": nbytes, "overhead_s": self.overhead_s}

    @classmethod
    def from_json(cls, data: dict) -> Roofline:
        macs, nbytes = data.get("macs_per_s"), data["bytes_per_s"]
        return cls(
            macs_per_s=math.inf if macs is None else float(macs),
            bytes_per_s=math.inf if nbytes is None else float(nbytes),
            overhead_s=float(data["overhead_s"]),
        )


@dataclass(frozen=True)
class Calibration:
    """The rates of one machine and runtime, with what they were measured on.

    ``node_overhead_s`` is the runtime's cost of going from one kernel to the next (outside
    the kernels themselves); ``run_overhead_s`` the fixed cost of one inference call.
    """

    runtime: str
    runtime_version: str
    provider: str
    threads: int
    machine: str
    rooflines: dict[str, Roofline]
    node_overhead_s: float
    run_overhead_s: float
    created: str = ""
    fit: dict[str, dict[str, float]] = field(default_factory=dict)  # per kind: samples, error
    format: int = CALIBRATION_FORMAT
    # how many bytes one call may pass through the cache and still find all its weights there
    # on the next, and from how many it finds none (warm_fraction ramps between them)
    weight_cache_bytes: float = 0.0
    weight_cold_bytes: float = 0.0
    weight_stream_bytes_per_s: float = 0.0  # how fast the others come from memory (0: unknown)
    channel_block: int = 1  # the runtime's channel block (layers are priced padded to it)
    # How a layer's time and the streaming of its uncached weights combine:
    # (t**p + stream**p) ** (1 / p), measured (calibrate.measure_stream_overlap); 0 means
    # p = infinity, max(t, stream), full overlap (what the fit gives at its grid's top)
    stream_overlap: float = 0.0
    # the runtime's nodes each in-place kind runs, measured (calibrate.context_graph): an SE
    # gate 4 (its pooling, its scale, the layout conversions around them), a fused ReLU6 or
    # HardSwish 0; every other kind runs 1. Each pays node_overhead_s.
    kind_nodes: dict[str, int] = field(default_factory=dict)
    # passes over the samples (calibrate.measure_samples: more where a slow spell outlasted
    # the first ones)
    passes: int = 0

    def warm_fraction(self, touched_bytes: float) -> float:
        """The share of a network's weights found in cache on the next call, given the bytes
        one call passes through the cache (:func:`cached_bytes`): all of them up to
        ``weight_cache_bytes``, none from ``weight_cold_bytes``, falling linearly between.

        A cache that kept the part that fits (``cache / touched``) would leave a network of
        twice the cache half warm; measured, weights cycled through in order were all cold
        by then (each one evicted just before its reuse), so a model of that kind priced
        MobileNetV4-Conv-Medium at 96 px 28% fast.
        """
        lo, hi = self.weight_cache_bytes, max(self.weight_cold_bytes, self.weight_cache_bytes)
        if touched_bytes <= lo:
            return 1.0
        if touched_bytes >= hi:
            return 0.0
        return (hi - touched_bytes) / (hi - lo)

    def with_stream(self, seconds: float, stream_s: float) -> float:
        """A layer's time when its uncached weights take ``stream_s`` to arrive."""
        p = self.stream_overlap
        if p <= 0:
            return max(seconds, stream_s)
        return (seconds**p + stream_s**p) ** (1 / p)

    def roofline(self, kind: str) -> Roofline:
        if kind not in self.rooflines:
            raise MobileNetError(
                f"the calibration has no rates for {kind!r} layers; recalibrate with "
                "`mobilenets calibrate`"
            )
        return self.rooflines[kind]

    def to_json(self) -> dict:
        data = asdict(self)
        data["rooflines"] = {kind: r.to_json() for kind, r in self.rooflines.items()}
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = "calibration") -> Calibration:
        try:
            return cls(
                runtime=str(data["runtime"]),
                runtime_version=str(data["runtime_version"]),
                provider=str(data["provider"]),
                threads=int(data["threads"]),
                machine=str(data["machine"]),
                rooflines={k: Roofline.from_json(v) for k, v in data["rooflines"].items()},
                node_overhead_s=float(data["node_overhead_s"]),
                run_overhead_s=float(data["run_overhead_s"]),
                created=str(data.get("created", "")),
                fit=dict(data.get("fit", {})),
                format=int(data.get("format", 0)),
                weight_cache_bytes=float(data.get("weight_cache_bytes", 0.0)),
                weight_cold_bytes=float(data.get("weight_cold_bytes", 0.0)),
                weight_stream_bytes_per_s=float(data.get("weight_stream_bytes_per_s", 0.0)),
                channel_block=int(data.get("channel_block", 1)),
                stream_overlap=float(data.get("stream_overlap", 0.0)),
                kind_nodes={k: int(v) for k, v in data.get("kind_nodes", {}).items()},
                passes=int(data.get("passes", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MobileNetError(f"{source} is not a latency calibration: {e!r}") from None


@dataclass(frozen=True)
class LayerLatency:
    """One priced layer: its kind, work, predicted time and which roof bounds it."""

    name: str
    kind: str
    macs: int  # counted, as ``cost`` reports them (the runtime's padding is priced, not shown)
    bytes: int
    seconds: float
    bound: str

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds


@dataclass
class LatencyPrediction:
    """Predicted time of one inference call: the priced layers plus the runtime's overheads."""

    layers: list[LayerLatency]
    node_overhead_s: float
    run_overhead_s: float
    kind_nodes: dict[str, int] = field(default_factory=dict)  # see Calibration.kind_nodes

    @property
    def seconds(self) -> float:
        kernels = sum(layer.seconds for layer in self.layers)
        return kernels + self.node_overhead_s * self.runtime_nodes + self.run_overhead_s

    @property
    def runtime_nodes(self) -> int:
        """Nodes the runtime runs, each paying the per-node overhead: every kernel, plus the
        layout conversions an in-place kind brings (without them an SE network was priced
        three overheads short per gate)."""
        return sum(self.kind_nodes.get(layer.kind, 1) for layer, _ in self.kernels())

    @property
    def nodes(self) -> int:
        """Kernels the runtime calls: a fused ReLU6 or HardSwish is priced but runs inside its
        convolution."""
        return len(self.kernels())

    def kernels(self) -> list[tuple[LayerLatency, float]]:
        """Each kernel the runtime calls, as its first layer and its predicted seconds with
        the fused layers priced after it (a convolution's ReLU6 pass) included: what a
        profiler's node time compares with."""
        out: list[tuple[LayerLatency, float]] = []
        for layer in self.layers:
            if layer.kind in FUSED_KINDS and out:
                head, seconds = out[-1]
                out[-1] = (head, seconds + layer.seconds)
            else:
                out.append((layer, layer.seconds))
        return out

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds

    def by_name(self) -> dict[str, LayerLatency]:
        return {layer.name: layer for layer in self.layers}

    def ms_by_kind(self) -> dict[str, float]:
        """Predicted kernel milliseconds summed per latency kind."""
        out: dict[str, float] = {}
        for layer in self.layers:
            out[layer.kind] = out.get(layer.kind, 0.0) + layer.ms
        return out

    def to_dict(self) -> dict:
        return {
            "predicted_ms": self.ms,
            "node_overhead_ms": 1e3 * self.node_overhead_s,
            "run_overhead_ms": 1e3 * self.run_overhead_s,
            "ms_by_kind": self.ms_by_kind(),
            "layers": [{**asdict(layer), "ms": layer.ms} for layer in self.layers],
        }


def cached_bytes(report: CostReport, dtype: str = "fp32") -> float:
    """Bytes one inference call passes through the cache: the weights, and every priced
    layer's output. Activations evict weights too: V2 0.75 at 160 px (10.5 MB of weights,
    fewer than the cache keeps of weights alone) ran its classifier at the cold rate."""
    kinds = latency_kinds(report.layers)
    outputs = sum(row.activations for row, kind in zip(report.layers, kinds, strict=True) if kind)
    return (report.total_params + outputs) * bytes_per_element(dtype)


def predict_latency(report: CostReport, calibration: Calibration) -> LatencyPrediction:
    """Price every layer of ``report`` with ``calibration``'s rooflines (fp32 activations).

    Fully connected layers are priced between their cold and warm rooflines by the share of
    the network's weights that stays cached between calls (:meth:`Calibration.warm_fraction`);
    every other layer's time is combined with the time to stream its share of the weights that
    the cache did not keep, overlapped as the calibration measured
    (:meth:`Calibration.with_stream`; a 960 -> 160 pointwise layer on a 3x3 map is bound by
    its weights).
    """
    warm = calibration.warm_fraction(cached_bytes(report))
    priced = []
    for row, kind in zip(report.layers, latency_kinds(report.layers), strict=True):
        if kind is None:
            continue
        roof = calibration.roofline(kind)
        macs = macs_done(row, kind, calibration.channel_block)
        nbytes = bytes_moved(row, kind, block=calibration.channel_block)
        seconds = roof.seconds(macs, nbytes)
        if kind == "fc" and warm > 0:
            hot = calibration.roofline(WARM_KIND).seconds(macs, nbytes)
            seconds = warm * hot + (1 - warm) * seconds
        elif warm < 1 and calibration.weight_stream_bytes_per_s > 0:
            # the weights the cache did not keep, streamed from memory
            cold_bytes = (1 - warm) * row.params * bytes_per_element("fp32")
            stream_s = cold_bytes / calibration.weight_stream_bytes_per_s
            seconds = calibration.with_stream(seconds, stream_s)
        priced.append(
            LayerLatency(
                name=row.name,
                kind=kind,
                macs=row.macs,
                bytes=round(nbytes),
                seconds=seconds,
                bound=roof.bound(macs, nbytes),
            )
        )
    return LatencyPrediction(
        priced, calibration.node_overhead_s, calibration.run_overhead_s, calibration.kind_nodes
    )
