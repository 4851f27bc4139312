"""Quantization-aware training: fine-tune a float run with int8 rounding simulated in the graph.

The PT2E flow: ``torch.export`` captures the model in training mode, ``prepare_qat_pt2e``
inserts fake-quantize modules where ``X86InductorQuantizer`` marks int8 (uint8 activations,
int8 symmetric weights: onnxruntime's U8S8) and simulates BatchNorm folding around each
convolution, so the weights learn to live with the rounding of the folded weights the
runtimes will see. As torchvision's QAT recipe does, the observers stop moving after
``freeze_observers_after`` epochs (the scales become constants the weights adapt to) and
BatchNorm's running statistics after ``freeze_bn_after`` (the folded weights stop shifting
under the rounding).

With ``distill`` the fine-tuning target is the float run's own logits (mean squared error),
not the labels: int8 should give the answers the float model gives, and no labels are needed,
so a run of imported ImageNet weights, which records no data, fine-tunes on fresh random crops
of the bundled photographs each epoch and is measured by its agreement with the float model
on the evaluation crops. Dropout is off in the distilled graph (its noise would be all the
student learns to match).

Two schemes. ``x86`` (the default) simulates onnxruntime's U8S8 with the x86 quantizer and
BatchNorm kept apart, as above; every runtime then re-quantizes the tuned float weights with
its own ranges. ``xnnpack`` simulates exactly what an XNNPACK program runs
(``XNNPACKQuantizer(is_qat=True)``: int8 activations everywhere, the residual adds
included) on the BN-folded network, and the trained graph's own ranges are shipped:
:func:`int8_graph` converts it (``convert_pt2e``) for ``export --format executorch --int8``,
so what was fine-tuned is what runs, not a re-calibration of it. With BatchNorm left in, the
simulated folding and the folded program disagreed (on ImageNet V2, 72.7% agreement with
float simulated against 80.3% converted, from the same ranges); folded first, the two
agree (76.0% against 76.7%).

The run directory is an ordinary run (``model.safetensors``, ``model.json``): the captured
graph keeps the model's parameter names, so its weights load back into the model, and
``export --int8``, ``quantize`` and ``quantize-mixed`` ship it to every runtime. Each epoch
also checkpoints the graph's whole state (observers' ranges included) and the optimizer to
``train_state.pt``; ``resume`` rebuilds the same graph from the float run and continues,
and refuses a different quantization config.

A segmenter fine-tunes the same way on its masks (the per-pixel cross-entropy ``train
--task segment`` trains with) and is scored by held-out mIoU instead of top-1: at its input
size, the full-resolution early layers of a segmenter are where int8 costs it most, and
post-training calibration cannot move the weights to fit the rounding. A detector is
refused: its int8 programs already keep its mAP (``benchmarks/results/int8_labels.md``), and
its loss needs its default boxes, which a captured graph does not carry.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchao.quantization.pt2e import (
    FusedMovingAvgObsFakeQuantize,
    MovingAverageMinMaxObserver,
    allow_exported_model_train_eval,
    disable_observer,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationSpec
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from mobilenets.data import make_loader
from mobilenets.deploy.images import held_out_inputs, run_data
from mobilenets.deploy.photos import photo_crops
from mobilenets.deploy.target import Agreement, agreement, pytorch_logits
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm, unfold_into
from mobilenets.models import model_task
from mobilenets.runs import META_FILE, RunInfo, load_run, save_run
from mobilenets.train.devices import pick_threads
from mobilenets.train.distributed import Processes
from mobilenets.train.optim import build_optimizer, parameter_groups, warmup_cosine
from mobilenets.train.progress import QAT_SCALARS, TrainingDisplay
from mobilenets.train.run_dir import STATE_FILE, holds_run, read_train_state
from mobilenets.train.task import Classification, Distillation, Segmentation, mean_loss
from mobilenets.train.trainer import OnBatch, OnEpoch, Trainer, run_lock

QAT_KEY = "qat"
OPTIMIZERS = ("sgd", "adam")
SCHEMES = ("x86", "xnnpack")
HELD_OUT = 300  # images the fake-quantized model is compared with the float one on
# the held-out score each epoch records, by the model's task: a record's key and its words
SCORES = {"classification": ("top1", "top-1"), "segmentation": ("miou", "mIoU")}
EVAL_BATCH = {"classification": 256, "segmentation": 32}  # a segmenter's logits are per pixel
PHOTO_SEED_BASE = 1000  # photo crop seeds for distillation: apart from calibration's and checks'


@dataclass(frozen=True)
class QATConfig:
    """The fine-tuning recipe and the quantization it simulates (recorded, checked on resume)."""

    epochs: int = 4
    # Adam at 1e-4 with BatchNorm frozen from the start: measured steadier than torchvision's
    # SGD at 0.005 with BN moving for 2 epochs (benchmarks/results/qat_recovery.md), whose first
    # epochs collapsed on ImageNet weights and whose float weights drifted from the network
    # that was fine-tuned (a digits run saved at 50.7% while its fake-quantized graph scored
    # 96.7%). QAT fine-tunes a trained network: it should move it little.
    lr: float = 1e-4
    batch_size: int = 32
    momentum: float = 0.9  # SGD's
    weight_decay: float = 1e-4
    freeze_bn_after: int = 0  # epochs with moving BatchNorm statistics
    freeze_observers_after: int = 2  # epochs with moving quantization ranges
    per_channel: bool = True  # weight scales per output channel (else per tensor)
    seed: int = 0
    # Match the float run's logits (mean squared error) instead of the labels: no
    # labels needed, and what int8 must keep is the float model's answers, not a new fit.
    distill: bool = False
    photo_crops: int = 512  # images per epoch when distilling on the bundled photos
    # "sgd" (torchvision's recipe) or "adam". Distilling ImageNet weights needs Adam: with the
    # BN folding simulated, a layer's weight gradient is scaled by its BN factor, and V2's
    # first depthwise layer got gradients 40x another's, so one SGD step size diverged
    # (loss 0.39 -> 2.4 in one step at lr 0.001) where Adam's per-weight steps do not.
    optimizer: str = "adam"
    scheme: str = "x86"  # the quantization simulated: see the module's docstring

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise MobileNetError("QAT needs at least 1 epoch and a batch size of at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MobileNetError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise MobileNetError(
                f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"
            )
        if self.scheme not in SCHEMES:
            raise MobileNetError(
                f"unknown QAT scheme {self.scheme!r}; choose from {', '.join(SCHEMES)}"
            )
        if self.photo_crops < 1:
            raise MobileNetError(f"photo_crops must be at least 1, got {self.photo_crops}")

    def quantization(self) -> dict[str, Any]:
        """What the graph simulates: a resumed run must simulate the same."""
        if self.scheme == "xnnpack":
            return {"quantizer": "XNNPACKQuantizer BN-folded", "per_channel": self.per_channel}
        return {"quantizer": "X86InductorQuantizer U8S8", "per_channel": self.per_channel}


@dataclass
class QATResult:
    run_dir: Path
    source: str
    history: list[dict[str, Any]] = field(default_factory=list)
    # the float run's held-out score (None: no labels), ``metric`` naming it (SCORES)
    source_score: float | None = None
    metric: str = "top1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "source": self.source,
            "metric": self.metric,
            "source_score": self.source_score,
            "history": self.history,
        }


def quantization_config(per_channel: bool):
    """onnxruntime's U8S8 for QAT: the x86 quantizer's default (per channel), or with one
    symmetric scale per weight tensor."""
    config = get_default_x86_inductor_quantization_config(is_qat=True)
    if per_channel:
        return config
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=2**-12
        ),
    )
    return type(config)(config.input_activation, config.output_activation, weight, None, True)


def quantizer_for(config: QATConfig):
    """The PT2E quantizer that marks what ``config``'s scheme simulates."""
    if config.scheme == "xnnpack":
        try:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
        except ImportError:
            raise MobileNetError(
                "the xnnpack QAT scheme needs ExecuTorch (pip install mobilenets[executorch])"
            ) from None
        return XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=config.per_channel, is_qat=True)
        )
    return X86InductorQuantizer().set_global(quantization_config(config.per_channel))


def trained_form(model: nn.Module, config: QATConfig) -> nn.Module:
    """The network QAT fine-tunes: BN-folded for ``xnnpack`` (what the program runs)."""
    return fold_batchnorm(model) if config.scheme == "xnnpack" else model


def plain_convolutions(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose convolutions are all of class ``nn.Conv2d``.

    The x86 quantizer finds the convolution -> BatchNorm -> activation patterns it quantizes
    by the exact class of the modules a node came from, so it passes over our
    ``DepthwiseConv`` and ``PointwiseConv`` (subclasses that only name the layer's role) and
    leaves those layers in float: MobileNetV2 was captured with 5 fake-quantize modules, only
    the stem and the classifier, instead of 107. The copy computes the same and keeps the
    parameter names, so the trained weights load back into ``model``.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.Conv2d):
            module.__class__ = nn.Conv2d
    return plain


def prepare(
    model: nn.Module, example: torch.Tensor, config: QATConfig | None = None
) -> torch.fx.GraphModule:
    """``model``'s training graph with fake quantization (and, where BatchNorm is left in,
    simulated BN folding) inserted around every convolution and fully connected layer."""
    config = config or QATConfig()
    model = plain_convolutions(model).train()
    batch = torch.export.Dim("batch", min=1, max=4096)
    pair = example[:1].expand(2, *example.shape[1:])  # a batch of 1 would fix the axis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = torch.export.export(model, (pair,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_qat_pt2e(captured, quantizer_for(config))
    # .train()/.eval() switch dropout and BatchNorm in the graph, as on any module
    return allow_exported_model_train_eval(prepared)


def freeze_batchnorm_statistics(graph: torch.fx.GraphModule) -> None:
    """Stop BatchNorm's running statistics: every batch_norm node runs with training=False
    (the graph's own way; eager QAT's ``freeze_bn_stats`` has no pt2e twin)."""
    for node in graph.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default:
            args = list(node.args)
            args[5] = False
            node.args = tuple(args)
    graph.recompile()


def evaluation_copy(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the training graph that computes as the deployed model will: BatchNorm on its
    running statistics, the quantization ranges fixed, no dropout. ``.eval()`` alone leaves
    the observers moving and the captured ``aten.dropout`` nodes in training mode, which made
    the fake-quantized evaluation random (a V2 classifier's dropout alone cost 12 points of
    agreement with the float model)."""
    copied = copy.deepcopy(graph).eval()
    copied.apply(disable_observer)
    without_dropout(copied)
    return copied


def without_dropout(graph: torch.fx.GraphModule) -> None:
    """Turn the graph's dropout off (its nodes say whether they train, not the module)."""
    for node in graph.graph.nodes:
        if node.target is torch.ops.aten.dropout.default:
            node.args = (node.args[0], node.args[1], False)
    graph.recompile()


def float_weights(
    graph: torch.fx.GraphModule, model: nn.Module, config: QATConfig | None = None
) -> nn.Module:
    """``model`` with the trained graph's parameters and BatchNorm statistics (a graph of the
    folded network goes back through :func:`unfold_into`)."""
    state = graph.state_dict()
    if config is not None and config.scheme == "xnnpack":
        folded = fold_batchnorm(model)
        folded.load_state_dict({k: state[k] for k in folded.state_dict()})
        return unfold_into(model, folded)
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model


SHIPPED_QUANTIZATION = (
    "QAT (PT2E, XNNPACKQuantizer is_qat, BN folded): the ranges and weights it was fine-tuned with"
)


def int8_graph(run_dir: str | os.PathLike[str]) -> torch.fx.GraphModule:
    """The int8 graph of an ``xnnpack``-scheme QAT run, its ranges the trained ones: the
    graph is rebuilt from the run's weights and its recorded state, and converted
    (quantize/dequantize pairs, BN already folded) for an XNNPACK program."""
    run_dir = Path(run_dir)
    model, info = load_run(run_dir)
    recorded = (info.train_config or {}).get(QAT_KEY)
    if not recorded or recorded.get("scheme") != "xnnpack":
        raise MobileNetError(f"{run_dir} is not a QAT run of the xnnpack scheme")
    names = {f.name for f in fields(QATConfig)}
    config = QATConfig(**{k: v for k, v in recorded.items() if k in names})
    if not (run_dir / STATE_FILE).is_file():
        raise MobileNetError(
            f"{run_dir} has lost its {STATE_FILE}, which holds the trained int8 ranges; "
            "export it calibrated with another format, or train it again"
        )
    state = _read_state(run_dir, config, finished_ok=True)
    example = torch.zeros(1, *info.input_size)
    graph = prepare(trained_form(model, config), example, config)
    graph.load_state_dict(state["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(evaluation_copy(graph))


def qat(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    config: QATConfig | None = None,
    resume: bool = False,
    data: str | os.PathLike[str] | None = None,
    on_epoch: OnEpoch = None,
    stop_after_epoch: int | None = None,
    on_batch: OnBatch = None,
    threads: int | None = None,
    progress: bool = False,
) -> QATResult:
    """Fine-tune the float run ``source`` with fake quantization into ``out`` (a new run
    directory, default ``<source>-qat``); with ``resume``, continue ``out`` where it stopped.
    ``stop_after_epoch`` ends early, as a killed run would; ``on_epoch(record)`` and
    ``on_batch(epoch, step, steps, loss)`` follow the epochs and their batches; ``progress``
    shows bars and a line per epoch on stderr, as ``train`` does. ``threads`` intra-op
    threads (default: :func:`~mobilenets.train.devices.pick_threads`, as ``train`` picks them).

    The run trains on the same trainer as ``train`` (:class:`~mobilenets.train.trainer.Trainer`):
    the run directory locked, atomic checkpoints, resume to the bit, the NaN check.
    With labels, each epoch records the fake-quantized graph's held-out top-1 and that of
    the float weights the run directory holds (``float_top1``, what ``evaluate`` gives), so
    a fine-tuning that leaves the float network behind shows at once.
    """
    config = config or QATConfig()
    config.validate()
    source = Path(source)
    if not (source / META_FILE).is_file():
        raise MobileNetError(f"{source} is not a float run directory (no {META_FILE})")
    out = Path(out) if out is not None else source.with_name(f"{source.name}-qat")
    model, info = load_run(source)
    if (info.train_config or {}).get(QAT_KEY):
        raise MobileNetError(f"{source} is already quantization-aware trained; start from float")
    task = model_task(info.model)
    if task not in SCORES:
        raise MobileNetError(
            f"{source} is a {task} model ({info.model}); qat fine-tunes classifiers and "
            "segmenters: ship a detector with `export --int8`, which calibrates it"
        )
    if task != "classification" and config.distill:
        raise MobileNetError(
            f"--distill matches a classifier's logits; {source} is a {task} model: "
            "fine-tune it on its labelled data (--data, or the data its run records)"
        )
    if not resume:
        _refuse_existing(out)
    if data is None and info.data is None and not config.distill:
        raise MobileNetError(
            f"{source} records no training data (imported weights?): pass --data with labelled "
            "images of its classes, or --distill to match the float model on photo crops"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(pick_threads(threads)[0])
    try:
        with run_lock(out, "QAT run", fresh=not resume, refuse=_refuse_existing):
            state = _read_state(out, config) if resume else None
            run = _QATTrainer(source, out, model, info, config, data, progress)
            run.stop_after_epoch, run.on_epoch, run.on_batch = stop_after_epoch, on_epoch, on_batch
            if state is not None:
                run.resume(state)
            run.run()
            return QATResult(out, str(source), run.history, run.source_score, run.metric)
    finally:
        torch.set_num_threads(previous_threads)  # the caller's process as it was


def _refuse_existing(out: Path) -> None:
    if holds_run(out):
        raise MobileNetError(f"{out} already holds a run; continue it with --resume")


class _QATTrainer(Trainer):
    """A QAT run on the trainer: the prepared graph trains, the float model is published;
    observers and BatchNorm freeze at their set epochs; each epoch is scored on a copy (top-1
    for a classifier, mIoU for a segmenter)."""

    curves = False  # the record is not train's (loss, fake-quantized and float top-1)
    closing_line = False  # the command says where the run is and how to ship it

    def __init__(
        self,
        source: Path,
        out: Path,
        model: nn.Module,
        info: RunInfo,
        config: QATConfig,
        data: str | os.PathLike[str] | None,
        progress: bool,
    ) -> None:
        self.source, self.float_model, self.info, self.qat = source, model, info, config
        self.on_photos = data is None and info.data is None
        teacher = copy.deepcopy(model).eval() if config.distill else None
        task = model_task(info.model)
        self.metric, self.metric_words = SCORES[task]
        self.labels = (
            Segmentation(len(info.class_names))
            if task == "segmentation"
            else Classification(info.class_names, nn.CrossEntropyLoss())
        )
        self.test_loader = None
        if self.on_photos:
            self.loader = _photo_loader(info, config, 1)
        else:
            bundle = run_data(info, data)
            train_set = bundle.train_raw if bundle.train_raw is not None else bundle.train
            self.loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed)
            self.test_loader = make_loader(
                bundle.test, EVAL_BATCH[task], shuffle=False, seed=config.seed
            )
        self.source_score = None if self.test_loader is None else self._score(model)
        held_out = held_out_inputs(info, data, HELD_OUT)[0] if teacher else None
        self.reference = _Reference(teacher, held_out) if teacher else None
        example = next(iter(self.loader))[0]
        torch.manual_seed(config.seed)
        graph = prepare(trained_form(model, config), example, config)
        if config.distill:
            without_dropout(graph)  # the float model's logits are the target, not a copy
        super().__init__(
            out,
            Distillation(teacher) if teacher is not None else self.labels,
            Processes(),
            config.epochs,
            config.seed,
            TrainingDisplay(quiet=False, is_main=progress, stderr=True),
            QAT_SCALARS,
        )
        self.model = graph
        groups = parameter_groups(graph, config.weight_decay)
        # torchvision's QAT recipe: plain momentum, no Nesterov
        self.optimizer = build_optimizer(
            config.optimizer, groups, config.lr, config.momentum, nesterov=False
        )
        self.steps_per_epoch = len(self.loader)
        self.scheduler = warmup_cosine(self.optimizer, 0, config.epochs * self.steps_per_epoch)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        # an observer's scale grows from one element to one per channel as it first observes:
        # the graph's own loading resizes it, which a shape check would refuse
        self.model.load_state_dict(weights)

    def _score(self, model: nn.Module) -> float:
        """``model``'s held-out top-1 (a classifier) or mIoU (a segmenter)."""
        cpu = torch.device("cpu")
        if isinstance(self.labels, Segmentation):
            return self.labels.scores(model, self.test_loader, cpu)["miou"]
        return self.labels.evaluation(model, self.test_loader, cpu).top1

    def begin_epoch(self, epoch: int) -> DataLoader:
        _freeze(self.model, self.qat, epoch)
        if self.on_photos:
            self.loader = _photo_loader(self.info, self.qat, epoch)
        else:
            self.loader.sampler.set_epoch(epoch)
        return self.loader

    def measure(self, epoch: int, sums: torch.Tensor, train_time: float, began: float) -> dict:
        # A copy is evaluated: switching the training graph to eval and back rewrites its
        # BatchNorm and dropout nodes into a graph that trains differently, and a resumed run
        # (whose graph was never switched) would then not continue the same training.
        evaluated = evaluation_copy(self.model)
        record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss(sums)}
        if self.test_loader is not None:
            record[f"fake_quant_{self.metric}"] = self._score(evaluated)
            saved = float_weights(self.model, copy.deepcopy(self.float_model), self.qat)
            record[f"float_{self.metric}"] = self._score(saved.eval())
        if self.reference is not None:
            match = self.reference.compare(evaluated)
            record["fake_quant_agreement"] = match.top1_agreement
            record["fake_quant_sqnr_db"] = match.sqnr_db
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["images_per_s"] = sums[-1].item() / train_time
        record["seconds"] = time.perf_counter() - began
        return record

    def recipe(self) -> dict[str, Any]:
        return {**asdict(self.qat), "quantization": self.qat.quantization()}

    def publish(self, epoch: int, replica_digests: list[str] | None) -> None:
        """The float weights of the graph and the QAT record: the run is whole every epoch."""
        info = replace(
            self.info,
            epoch=epoch,
            metrics={**self.history[-1], "history": self.history},
            train_config={QAT_KEY: {"source": str(self.source), **self.recipe()}},
            finished=epoch == self.qat.epochs,
        )
        save_run(self.run_dir, float_weights(self.model, self.float_model, self.qat), info)

    def state_extra(self) -> dict[str, Any]:
        return {"config": self.recipe()}

    def epoch_line(self, r: dict[str, Any]) -> str:
        measured = []
        if f"fake_quant_{self.metric}" in r:
            words = self.metric_words
            measured.append(f"fake-quantized {words} {r[f'fake_quant_{self.metric}']:.2%}")
            measured.append(f"float weights {r[f'float_{self.metric}']:.2%}")
        if "fake_quant_agreement" in r:
            measured.append(
                f"agreement with float {r['fake_quant_agreement']:.2%}, "
                f"logit SQNR {r['fake_quant_sqnr_db']:.1f} dB"
            )
        return (
            f"epoch {r['epoch']}: loss {r['loss']:.4f}, {', '.join(measured)} "
            f"({r['seconds']:.0f} s)"
        )


class _Reference:
    """The float model's logits on held-out images, to measure the fake-quantized model by."""

    def __init__(self, teacher: nn.Module, images: list[torch.Tensor]) -> None:
        self.images = images
        self.logits = pytorch_logits(teacher, images)

    def compare(self, model: nn.Module) -> Agreement:
        return agreement(self.logits, pytorch_logits(model, self.images))


def _photo_loader(info: RunInfo, config: QATConfig, epoch: int) -> DataLoader:
    """Epoch ``epoch``'s fresh random crops of the bundled photos (seeds apart from the
    calibration and evaluation crops'), for distilling a run that records no data."""
    seed = PHOTO_SEED_BASE + 1000 * config.seed + epoch
    crops = photo_crops(config.photo_crops, info.input_size[1], info.mean, info.std, seed=seed)
    unlabelled = TensorDataset(crops, torch.zeros(len(crops), dtype=torch.long))
    return DataLoader(unlabelled, batch_size=config.batch_size)


def _freeze(graph: torch.fx.GraphModule, config: QATConfig, epoch: int) -> None:
    """Epoch ``epoch`` (from 1) starts with BN statistics and observers frozen once past their
    set epochs; called every epoch, so a resumed run freezes what the original had."""
    if epoch > config.freeze_observers_after:
        graph.apply(disable_observer)
    if epoch > config.freeze_bn_after:
        freeze_batchnorm_statistics(graph)


def _read_state(out: Path, config: QATConfig, finished_ok: bool = False) -> dict[str, Any]:
    """``out``'s ``train_state.pt``, refused when it simulated another quantization or (unless
    ``finished_ok``) finished its epochs."""
    state = read_train_state(out)
    recorded = state.get("config", {})
    if recorded.get("quantization") != config.quantization():
        raise MobileNetError(
            f"{out} was trained with quantization {recorded.get('quantization')}, not "
            f"{config.quantization()}; resume it with the same config"
        )
    if not finished_ok and int(state["epoch"]) >= config.epochs:
        raise MobileNetError(f"{out} already finished its {config.epochs} epochs")
    return state
