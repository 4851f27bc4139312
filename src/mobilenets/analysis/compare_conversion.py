"""Does the conversion pay? Train a CNN and its separable conversion alike and compare them.

``vgg_small`` (standard 3x3 convolutions) and ``vgg_small_separable`` (the same network after
:func:`~mobilenets.analysis.convert.to_separable`) are trained on the same data with the same
recipe, seed and number of epochs by :func:`mobilenets.train.loop.train`; the comparison reports
each one's held-out top-1 accuracy, parameters and mult-adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mobilenets.analysis.convert import ReplacedConv, to_separable
from mobilenets.analysis.cost import profile_model
from mobilenets.errors import MobileNetError
from mobilenets.models import create_model
from mobilenets.runs import load_run, read_run_info
from mobilenets.train.loop import train
from mobilenets.train.recipe import TrainConfig
from mobilenets.train.run_dir import holds_run

ORIGINAL, CONVERTED = "vgg_small", "vgg_small_separable"


@dataclass(frozen=True)
class TrainedCost:
    """One trained network: where it is, how accurate it is, and what it costs."""

    model: str
    run_dir: str
    top1: float  # held-out top-1 after the last epoch, as a fraction
    params: int
    macs: int  # mult-adds of one image at the training resolution


@dataclass(frozen=True)
class ConversionComparison:
    original: TrainedCost
    converted: TrainedCost
    replaced: list[ReplacedConv]
    resolution: int
    epochs: int

    @property
    def macs_reduction(self) -> float:
        """How many times fewer mult-adds the converted network needs."""
        return self.original.macs / self.converted.macs

    @property
    def params_reduction(self) -> float:
        return self.original.params / self.converted.params

    @property
    def accuracy_drop_points(self) -> float:
        """Original minus converted top-1, in percentage points (negative: the converted won)."""
        return 100 * (self.original.top1 - self.converted.top1)

    def to_dict(self) -> dict:
        return {
            "original": asdict(self.original),
            "converted": asdict(self.converted),
            "replaced": [asdict(r) for r in self.replaced],
            "resolution": self.resolution,
            "epochs": self.epochs,
            "macs_reduction": self.macs_reduction,
            "params_reduction": self.params_reduction,
            "accuracy_drop_points": self.accuracy_drop_points,
        }


def _trained_cost(run_dir: Path) -> TrainedCost:
    model, info = load_run(run_dir)
    report = profile_model(model, info.input_size[1:], in_chans=info.input_size[0])
    return TrainedCost(
        model=info.model,
        run_dir=str(run_dir),
        top1=float(read_run_info(run_dir).metrics["test_top1"]),
        params=report.total_params,
        macs=report.total_macs,
    )


def compare_conversion(
    out: str | Path = "runs/convert",
    epochs: int = 15,
    width_mult: float = 1.0,
    seed: int = 0,
    data: str | None = None,
    quiet: bool = False,
) -> ConversionComparison:
    """Train ``vgg_small`` and its separable conversion under ``out``/<model> and compare them.

    Both runs use :class:`~mobilenets.train.recipe.TrainConfig`'s recipe with the same ``epochs``,
    ``seed`` and ``data`` (the embedded digits by default), so the only difference between
    them is the convolutions.
    """
    out = Path(out)
    taken = [out / name for name in (ORIGINAL, CONVERTED) if holds_run(out / name)]
    if taken:  # train's own refusal would suggest --resume, which this command has not
        raise MobileNetError(
            f"{out} already holds a comparison ({taken[0]} is a run); pick another --out or "
            f"remove {out}"
        )
    run_dirs = {}
    for name in (ORIGINAL, CONVERTED):
        config = TrainConfig(
            model=name,
            data=data,
            width_mult=width_mult,
            epochs=epochs,
            seed=seed,
            out=str(out / name),
            quiet=quiet,
        )
        run_dirs[name] = train(config)
    original, converted = (_trained_cost(run_dirs[name]) for name in (ORIGINAL, CONVERTED))
    _, info = load_run(run_dirs[ORIGINAL])
    replaced = to_separable(create_model(ORIGINAL, **info.model_kwargs)).replaced
    return ConversionComparison(original, converted, replaced, info.input_size[1], epochs)
