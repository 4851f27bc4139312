"""The cost model: what every layer of a network costs, traced from one real forward pass.

Two views that must agree:

* the closed forms of the lecture and the papers, for one layer: a standard f x f convolution
  costs ``f*f*n_c * n_out^2 * n_c'`` multiplications, a depthwise one ``f*f * n_out^2 * n_c``,
  a pointwise one ``n_c * n_out^2 * n_c'``; the separable pair costs ``1/n_c' + 1/f^2`` of the
  standard convolution;
* :func:`profile_model`, which runs a model once with hooks on every leaf module and records
  per layer its kind, shapes, mult-adds, parameters and output activation size, then pairs each
  depthwise layer with the pointwise layer that follows it and prices the standard convolution
  the pair replaces.

Mult-adds count convolutions and fully connected layers only (BatchNorm, activations, pooling
and residual additions are left out), which is how both papers count them.

Activation memory is the third cost. While a layer runs, PyTorch keeps alive its input, its
output, and the input of every module call that encloses it (a call holds its argument until it
returns): the network input, the block input that a residual block keeps for its add, the
input of the conv-BN-activation unit. The trace records that set for every layer (in-place
activations share their input's storage and are counted once) and for every block, including
the residual add; its maximum is the network's peak activation memory at the traced batch
size and resolution, in bytes for fp32, fp16 or int8 activations.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import InvertedResidual, SqueezeExcitation, StochasticDepth, is_depthwise
from mobilenets.models import check_resolution

# ---------------------------------------------------------------------------------------------
# Closed forms (square inputs and kernels, as in the lecture)
# ---------------------------------------------------------------------------------------------


def conv_output_size(n: int, f: int, padding: int = 0, stride: int = 1) -> int:
    """Spatial size after an f x f convolution: floor((n + 2p - f) / s) + 1."""
    return (n + 2 * padding - f) // stride + 1


def standard_conv_macs(f: int, n_c: int, n_out: int, n_c_out: int) -> int:
    """Multiplications of a standard convolution: f*f*n_c per output value, n_out^2*n_c' values."""
    return f * f * n_c * n_out * n_out * n_c_out


def depthwise_conv_macs(f: int, n_c: int, n_out: int) -> int:
    """Multiplications of a depthwise convolution: f*f per output value, n_out^2*n_c values."""
    return f * f * n_out * n_out * n_c


def pointwise_conv_macs(n_c: int, n_out: int, n_c_out: int) -> int:
    """Multiplications of a 1x1 convolution: n_c per output value, n_out^2*n_c' values."""
    return n_c * n_out * n_out * n_c_out


def separable_cost_ratio(f: int, n_c_out: int) -> float:
    """Cost of depthwise + pointwise over the standard convolution: 1/n_c' + 1/f^2."""
    return 1 / n_c_out + 1 / (f * f)


# ---------------------------------------------------------------------------------------------
# Traced cost model
# ---------------------------------------------------------------------------------------------

KINDS = (
    "standard",
    "depthwise",
    "pointwise",
    "grouped",
    "se",
    "linear",
    "batchnorm",
    "activation",
    "pool",
    "drop_path",
    "other",
)


def layer_kind(module: nn.Module) -> str:
    """Name what a leaf module is, in the vocabulary of the papers.

    (Squeeze-and-excitation's 1x1 convolutions are pointwise by shape; :func:`profile_model`
    names them ``se`` from where they sit.)"""
    if isinstance(module, nn.Conv2d):
        if is_depthwise(module):
            return "depthwise"
        if module.groups > 1:
            return "grouped"
        if module.kernel_size == (1, 1):
            return "pointwise"
        return "standard"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(
        module,
        nn.ReLU | nn.ReLU6 | nn.Hardswish | nn.Hardsigmoid | nn.SiLU | nn.GELU | nn.Sigmoid,
    ):
        return "activation"
    if isinstance(module, StochasticDepth):
        return "drop_path"
    if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd | nn.modules.pooling._AvgPoolNd):
        return "pool"
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AdaptiveMaxPoolNd):
        return "pool"
    return "other"


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


@dataclass(frozen=True)
class LayerCost:
    """One leaf module's share of the cost, for one forward pass at the traced batch size."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    activations: int  # elements in the layer's output
    live_activations: int = 0  # elements alive at once while the layer runs (see module doc)
    op: str = ""  # the module's class (``SiLU``): what a runtime can fuse depends on it

    def live_bytes(self, dtype: str = "fp32") -> int:
        return self.live_activations * bytes_per_element(dtype)


@dataclass(frozen=True)
class BlockMemory:
    """A block's (e.g. one bottleneck's) activation footprint during inference.

    ``live_activations`` is the most that is alive at once anywhere inside the block: its
    layers, and the residual add, where the kept input, the projection and the sum coexist.
    """

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    live_activations: int

    def live_bytes(self, dtype: str = "fp32") -> int:
        return self.live_activations * bytes_per_element(dtype)


BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


def bytes_per_element(dtype: str) -> int:
    """Storage of one activation value for the deployment dtypes the cost model knows."""
    if dtype not in BYTES_PER_ELEMENT:
        raise MobileNetError(f"unknown dtype {dtype!r}; known: {', '.join(BYTES_PER_ELEMENT)}")
    return BYTES_PER_ELEMENT[dtype]


@dataclass(frozen=True)
class SeparablePair:
    """A depthwise layer and the pointwise layer after it, priced against a standard conv."""

    depthwise: str
    pointwise: str
    kernel_size: int
    in_channels: int
    out_channels: int
    output_hw: tuple[int, int]
    depthwise_macs: int
    pointwise_macs: int
    standard_macs: int  # a standard kxk conv with the depthwise input and the pointwise output

    @property
    def separable_macs(self) -> int:
        return self.depthwise_macs + self.pointwise_macs

    @property
    def ratio(self) -> float:
        """Measured from the traced layers; equals 1/n_c' + 1/f^2 for square kernels."""
        return self.separable_macs / self.standard_macs

    @property
    def closed_form_ratio(self) -> float:
        return separable_cost_ratio(self.kernel_size, self.out_channels)


@dataclass
class CostReport:
    """The per-layer rows of one traced forward pass and their totals."""

    input_shape: tuple[int, ...]
    layers: list[LayerCost]
    pairs: list[SeparablePair] = field(default_factory=list)
    total_params: int = 0
    blocks: list[BlockMemory] = field(default_factory=list)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    @property
    def peak_activations(self) -> int:
        """Most activation values alive at once in one inference pass, at the traced batch."""
        lives = [r.live_activations for r in itertools.chain(self.layers, self.blocks)]
        return max(lives, default=0)

    def peak_activation_bytes(self, dtype: str = "fp32") -> int:
        """Peak activation memory of one inference pass with ``dtype`` activations."""
        return self.peak_activations * bytes_per_element(dtype)

    def macs_by_kind(self) -> dict[str, int]:
        """Mult-adds summed per layer kind: where the network spends its compute."""
        out: dict[str, int] = {}
        for layer in self.layers:
            if layer.macs:
                out[layer.kind] = out.get(layer.kind, 0) + layer.macs
        return out

    def to_dict(self) -> dict:
        """A JSON-ready form, with the derived totals and ratios spelled out."""
        return {
            "input_shape": list(self.input_shape),
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "total_activations": self.total_activations,
            "peak_activations": self.peak_activations,
            "peak_activation_bytes": {
                dtype: self.peak_activation_bytes(dtype) for dtype in BYTES_PER_ELEMENT
            },
            "macs_by_kind": self.macs_by_kind(),
            "layers": [
                {
                    **asdict(layer),
                    "input_shape": list(layer.input_shape),
                    "output_shape": list(layer.output_shape),
                }
                for layer in self.layers
            ],
            "separable_pairs": [
                {
                    **asdict(pair),
                    "output_hw": list(pair.output_hw),
                    "separable_macs": pair.separable_macs,
                    "ratio": pair.ratio,
                    "closed_form_ratio": pair.closed_form_ratio,
                }
                for pair in self.pairs
            ],
            "blocks": [
                {
                    **asdict(block),
                    "input_shape": list(block.input_shape),
                    "output_shape": list(block.output_shape),
                }
                for block in self.blocks
            ],
        }


def count_params(model: nn.Module) -> int:
    """All parameters of a model (BatchNorm's affine ones included, buffers not)."""
    return sum(p.numel() for p in model.parameters())


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise MobileNetError("the model has no convolution, so its input shape cannot be inferred")


def _find_pairs(layers: list[LayerCost], modules: dict[str, nn.Module]) -> list[SeparablePair]:
    """Pair each depthwise conv with the next conv in execution order when it is pointwise.

    Squeeze-and-excitation between them (V3, EfficientNet) is skipped over: it rescales the
    depthwise output and leaves its shape, so the pointwise layer after it still completes the
    separable pair. The pointwise layer must read a map of the depthwise output's shape.
    """
    convs = [
        layer
        for layer in layers
        if isinstance(modules.get(layer.name), nn.Conv2d) and layer.kind != "se"
    ]
    pairs = []
    for dw, pw in itertools.pairwise(convs):
        if dw.kind != "depthwise" or pw.kind != "pointwise":
            continue
        if pw.input_shape[1:] != dw.output_shape[1:]:
            continue
        dw_mod = modules[dw.name]
        k = dw_mod.kernel_size[0]
        n_c, n_c_out = dw.input_shape[1], pw.output_shape[1]
        h, w = pw.output_shape[2], pw.output_shape[3]
        batch = pw.output_shape[0]
        pairs.append(
            SeparablePair(
                depthwise=dw.name,
                pointwise=pw.name,
                kernel_size=k,
                in_channels=n_c,
                out_channels=n_c_out,
                output_hw=(h, w),
                depthwise_macs=dw.macs,
                pointwise_macs=pw.macs,
                standard_macs=batch * k * dw_mod.kernel_size[1] * n_c * h * w * n_c_out,
            )
        )
    return pairs


class _LiveTensors:
    """The tensors each running module call holds, to price what is alive at each moment.

    A stack of call frames, pushed by forward pre-hooks and popped by forward hooks: each frame
    holds the call's input and, once seen, the last output produced inside it (the value a
    block's own code holds, e.g. the projection before the residual add).
    """

    def __init__(self) -> None:
        self.frames: list[list[torch.Tensor | None]] = []

    def enter(self, inputs: tuple) -> None:
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        self.frames.append([first, None])

    def exit(self, output: object) -> int:
        """Leave the innermost call; return the activation values alive as it returns."""
        tensor = output if isinstance(output, torch.Tensor) else None
        alive = self._count(itertools.chain(*self.frames, [tensor]))
        self.frames.pop()
        if self.frames and tensor is not None:
            self.frames[-1][1] = tensor
        return alive

    @staticmethod
    def _count(tensors: Iterable[torch.Tensor | None]) -> int:
        """Elements of the distinct storages among ``tensors`` (views and in-place share one)."""
        storages: dict[int, int] = {}
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return sum(storages.values())


def _block_names(model: nn.Module) -> set[str]:
    """The modules whose footprint is reported as a block: the trunk's stages.

    The children of ``model.features`` when the model has that trunk (every model here),
    otherwise the model's direct children.
    """
    trunk = getattr(model, "features", None)
    if isinstance(trunk, nn.Module):
        prefix = next(name for name, m in model.named_modules() if m is trunk)
        return {f"{prefix}.{name}" for name, _ in trunk.named_children()}
    return {name for name, _ in model.named_children()}


class _Tracer:
    """Forward hooks that note every leaf layer's cost and every block's peak memory."""

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[LayerCost] = []
        self.blocks: list[BlockMemory] = []
        self.modules: dict[str, nn.Module] = {}
        self.live = _LiveTensors()
        self.block_names = _block_names(model)
        self.block_peak: dict[str, int] = {}
        self.se_members = {
            f"{prefix}.{child}" if prefix else child
            for prefix, m in model.named_modules()
            if isinstance(m, SqueezeExcitation)
            for child, _ in m.named_children()
        }

    def attach(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Hook every module: a leaf gets a row, a block its peak; the handles to remove."""
        handles = []
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(self.enter))
            if next(module.children(), None) is None:
                self.modules[name] = module
                handles.append(module.register_forward_hook(self.leaf(name)))
            else:
                handles.append(module.register_forward_hook(self.leave(name)))
        return handles

    def enter(self, module: nn.Module, inputs: tuple) -> None:
        self.live.enter(inputs)

    def exit_and_note(self, name: str, output: object) -> int:
        alive = self.live.exit(output)
        for block in self.block_names:
            if name == block or name.startswith(block + "."):
                self.block_peak[block] = max(self.block_peak.get(block, 0), alive)
        return alive

    def leave(self, name: str) -> Callable[[nn.Module, tuple, object], None]:
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            self.exit_and_note(name, output)
            if name in self.block_names and isinstance(output, torch.Tensor):
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else output
                shapes = tuple(first.shape), tuple(output.shape)
                self.blocks.append(BlockMemory(name, *shapes, self.block_peak[name]))

        return record

    def leaf(self, name: str) -> Callable[[nn.Module, tuple, object], None]:
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            alive = self.exit_and_note(name, output)
            if not isinstance(output, torch.Tensor):
                return
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else output
            self.layers.append(
                LayerCost(
                    name=name,
                    kind="se" if name in self.se_members else layer_kind(module),
                    input_shape=tuple(first.shape),
                    output_shape=tuple(output.shape),
                    macs=_layer_macs(module, output),
                    params=sum(p.numel() for p in module.parameters(recurse=False)),
                    activations=output.numel(),
                    live_activations=alive,
                    op=type(module).__name__,
                )
            )

        return record


def profile_model(
    model: nn.Module,
    resolution: int | tuple[int, int] = 224,
    batch_size: int = 1,
    in_chans: int | None = None,
) -> CostReport:
    """Trace one forward pass of ``model`` and return the cost of every leaf layer.

    The model runs in eval mode under ``torch.no_grad`` on a zero input and is put back in the
    mode it was in. Only leaf modules get rows; parameters are counted for the whole model.
    Bottlenecks set to split inference are traced whole (the mult-adds are the same; the split
    computation is not made of module calls a hook could see).
    """
    if not isinstance(model, nn.Module):
        raise MobileNetError(f"expected a torch.nn.Module, got {type(model).__name__}")
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    if isinstance(getattr(model, "stride", None), int):  # our networks know their total stride
        for size in (h, w):
            check_resolution(model, size)
    if batch_size < 1:
        raise MobileNetError(f"batch size must be a positive integer, got {batch_size}")
    in_chans = _input_channels(model) if in_chans is None else in_chans
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(batch_size, in_chans, h, w, device=device)

    tracer = _Tracer(model)
    handles = tracer.attach(model)
    was_training = model.training
    splits = _unsplit(model)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for block, k in splits:
            block.split = k
        for handle in handles:
            handle.remove()
    return CostReport(
        input_shape=tuple(x.shape),
        layers=tracer.layers,
        pairs=_find_pairs(tracer.layers, tracer.modules),
        total_params=count_params(model),
        blocks=tracer.blocks,
    )


def _unsplit(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """Set split bottlenecks to whole inference for the trace; return what to restore."""
    splits = [(m, m.split) for m in model.modules() if isinstance(m, InvertedResidual)]
    for block, _ in splits:
        block.split = 1
    return splits
