"""Pick the network for a budget: enumerate, prune by the cost and latency models, measure the
candidates near the frontier in the real runtime, short-train them, keep the Pareto front.

The MobileNet papers turn two dials, width alpha and resolution rho (V1 Tables 6-7, V2 Figure
5), and leave the pick to the user. :func:`choose` makes it from a budget:

1. **Enumerate** every registered family over widths and resolutions, built as training
   would build it for the data (classes, channels, small-input stride), and price each with
   :func:`~mobilenets.analysis.cost.profile_model` (mult-adds, parameters, peak activation memory)
   and the latency model (:mod:`mobilenets.latency.model`).
2. **Prune** what cannot fit: the counted budgets exactly, latency with a margin for the
   model's error, so that a candidate the model misjudges is still measured.
3. **Measure** the frontier: per family, the fitting candidates that no other fitting one of
   that family beats on both width and resolution (a larger network of the same family is
   the more accurate one), exported to ONNX and timed in onnxruntime, interleaved. Where a
   family's candidate measures over the budget, the next smaller ones are measured in the
   next round (:func:`descend`), up to :data:`MEASURE_ROUNDS` rounds: the margin admits
   candidates predicted up to 25% over, and an accurate model then leaves the first round
   with nothing that fits.
4. **Train** (``epochs``) the measured candidates that fit, largest first, within a total time
   budget; every run directory is kept, so an interrupted choice resumes where it stopped.
5. Keep the **Pareto front** of accuracy (or mult-adds, untrained) against measured latency
   and recommend its most accurate member, with the command that trains it fully.

Everything is recorded in ``OUT/choose.json`` after each step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilenets.analysis.cost import profile_model
from mobilenets.analysis.timing import time_interleaved
from mobilenets.data import load_data
from mobilenets.deploy.runtime import create_session
from mobilenets.deploy.targets.onnx import write_onnx
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.io import atomic_path, atomic_write_json
from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.machine import DEFAULT_RUNTIME, RUNTIMES, check_runtime
from mobilenets.latency.model import Calibration, predict_latency
from mobilenets.models import create_model, list_models, takes_width
from mobilenets.runs import read_run_info
from mobilenets.train.loop import model_kwargs, train
from mobilenets.train.recipe import TrainConfig
from mobilenets.train.run_dir import holds_run

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)
LATENCY_MARGIN = 0.25  # prune only what the model predicts 25% over the budget
MEASURE_ROUNDS = 3  # rounds of measuring the frontier, each one step down where it was too slow
STATE_FILE = "choose.json"
STATE_VERSION = 1
MiB = 2**20


@dataclass(frozen=True)
class Budget:
    """What the chosen network may cost; any combination, at least one."""

    latency_ms: float | None = None  # measured in the runtime, batch 1
    macs: float | None = None  # mult-adds per image
    params: float | None = None
    memory_mib: float | None = None  # peak fp32 activation memory, batch 1

    def __post_init__(self) -> None:
        values = dataclasses.asdict(self)
        if all(v is None for v in values.values()):
            raise MobileNetError(
                "give at least one budget: --latency-ms, --macs, --params or --memory-mib"
            )
        for name, value in values.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MobileNetError(f"the {name} budget must be a positive number, got {value}")

    def counted_excess(self, c: Candidate) -> list[str]:
        """The counted budgets ``c`` exceeds, as words."""
        over = []
        if self.macs is not None and c.macs > self.macs:
            over.append(f"{c.macs / 1e6:,.1f}M mult-adds > {self.macs / 1e6:,.1f}M")
        if self.params is not None and c.params > self.params:
            over.append(f"{c.params / 1e6:.2f}M parameters > {self.params / 1e6:.2f}M")
        if self.memory_mib is not None and c.peak_mib > self.memory_mib:
            over.append(f"{c.peak_mib:.2f} MiB peak activations > {self.memory_mib:g} MiB")
        return over

    def may_fit(self, c: Candidate) -> bool:
        """Within the counted budgets, and predicted within the latency budget's margin."""
        if self.counted_excess(c):
            return False
        limit = math.inf if self.latency_ms is None else self.latency_ms * (1 + LATENCY_MARGIN)
        return c.predicted_ms <= limit

    def fits(self, c: Candidate) -> bool:
        """Within every budget, latency as measured."""
        if self.counted_excess(c):
            return False
        if self.latency_ms is None:
            return True
        return c.measured_ms is not None and c.measured_ms <= self.latency_ms


@dataclass
class Candidate:
    """One family at one width and resolution, and what is known about it so far."""

    model: str
    width: float
    resolution: int
    macs: int
    params: int
    peak_mib: float
    predicted_ms: float
    measured_ms: float | None = None  # fastest interleaved call
    median_ms: float | None = None
    accuracy: float | None = None  # held-out top-1 after the short training
    run_dir: str | None = None
    epochs_trained: int = 0

    @property
    def key(self) -> str:
        return f"{self.model}-w{self.width:g}-r{self.resolution}"

    @property
    def label(self) -> str:
        return f"{self.model} {self.width:g} @{self.resolution}"

    @property
    def width_mult(self) -> float | None:
        """The width to build and train it with: None for a family without a multiplier,
        whose ``width`` 1.0 only stands for its table's own widths."""
        return self.width if takes_width(self.model) else None


@dataclass
class Choice:
    """The outcome: every candidate, the measured ones, the front and the pick."""

    budget: Budget
    candidates: list[Candidate]
    measured: list[Candidate]
    front: list[Candidate]
    recommended: Candidate | None
    train_command: str | None
    out: Path
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": dataclasses.asdict(self.budget),
            "recommended": None if self.recommended is None else self.recommended.key,
            "train_command": self.train_command,
            "front": [c.key for c in self.front],
            "measured": [dataclasses.asdict(c) for c in self.measured],
            "candidates": len(self.candidates),
            "notes": self.notes,
        }


@dataclass
class ChooseConfig:
    """Everything :func:`choose` depends on besides the budget."""

    data: str | None = None  # None or "digits": the embedded digits
    out: str = os.path.join("runs", "choose")  # beside the training runs (git-ignored)
    families: Sequence[str] | None = None  # None: every registered model
    widths: Sequence[float] = WIDTHS
    resolutions: Sequence[int] = RESOLUTIONS
    runtime: str = DEFAULT_RUNTIME
    threads: int = 0  # 0: the runtime's default
    max_measure: int = 8
    rounds: int = 20  # interleaved timing rounds
    epochs: int = 0  # 0: no training, rank by mult-adds
    max_train: int = 3
    time_budget_s: float = 600.0
    seed: int = 0
    quiet: bool = False

    def validate(self) -> None:
        check_runtime(self.runtime)
        checks = [
            (self.max_measure >= 1, f"--measure must be at least 1, got {self.max_measure}"),
            (self.rounds >= 1, f"--rounds must be at least 1, got {self.rounds}"),
            (self.epochs >= 0, f"--epochs must be 0 or more, got {self.epochs}"),
            (self.max_train >= 1, f"--train must be at least 1, got {self.max_train}"),
            (self.time_budget_s > 0, "the time budget must be positive"),
            (all(w > 0 for w in self.widths), f"widths must be positive, got {self.widths}"),
            (
                all(r >= 8 for r in self.resolutions),
                f"resolutions must be 8 px or more, got {self.resolutions}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MobileNetError(message)


# --------------------------------------------------------------------------- enumerate, prune


def enumerate_candidates(
    config: ChooseConfig,
    calibration: Calibration,
    num_classes: int,
    in_chans: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Candidate]:
    """Every family x width x resolution, built as :func:`mobilenets.train.loop.train` would build
    it for this data, with its counted costs and predicted latency. Combinations a family
    refuses (a resolution below its total stride) are left out."""
    families = list(list_models() if config.families is None else config.families)
    grid = [
        (f, w, r)
        for f in families
        for w in (config.widths if takes_width(f) else (1.0,))  # 1.0: the table's own widths
        for r in config.resolutions
    ]
    candidates = []
    for i, (family, width, resolution) in enumerate(grid):
        recipe = TrainConfig(model=family, width_mult=width, resolution=resolution)
        try:
            model = create_model(family, **model_kwargs(recipe, num_classes, in_chans, resolution))
            report = profile_model(model, resolution)
        except MobileNetError:
            if family not in list_models():
                raise
            continue
        candidates.append(
            Candidate(
                model=family,
                width=width,
                resolution=resolution,
                macs=report.total_macs,
                params=report.total_params,
                peak_mib=report.peak_activation_bytes("fp32") / MiB,
                predicted_ms=predict_latency(report, calibration).ms,
            )
        )
        if progress is not None:
            progress(i + 1, len(grid))
    return candidates


def nothing_fits(budget: Budget, candidates: Sequence[Candidate]) -> str:
    """The one line saying what the cheapest candidate would need."""
    cheapest = min(candidates, key=lambda c: (c.predicted_ms, c.macs))
    needs = [f"{cheapest.predicted_ms:.2f} ms predicted"]
    if budget.macs is not None:
        needs.append(f"{min(c.macs for c in candidates) / 1e6:,.1f}M mult-adds")
    if budget.params is not None:
        needs.append(f"{min(c.params for c in candidates) / 1e6:.2f}M parameters")
    if budget.memory_mib is not None:
        needs.append(f"{min(c.peak_mib for c in candidates):.2f} MiB peak activations")
    return (
        f"no candidate fits the budget: the cheapest, {cheapest.label}, needs "
        f"{', '.join(needs)} (the smallest of each over all {len(candidates)} candidates)"
    )


def frontier(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Per family, the candidates no other one of the family matches or beats on both width
    and resolution: the largest networks of each family that may fit."""
    front = []
    for c in candidates:
        dominated = any(
            o is not c
            and o.model == c.model
            and o.width >= c.width
            and o.resolution >= c.resolution
            and (o.width, o.resolution) != (c.width, c.resolution)
            for o in candidates
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: -c.predicted_ms)


def _covers(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` is ``b``'s family at least as wide and at least as large an input."""
    return a.model == b.model and a.width >= b.width and a.resolution >= b.resolution


def descend(
    remaining: Sequence[Candidate], measured: Sequence[Candidate], budget: Budget
) -> list[Candidate]:
    """What is left to measure once ``measured`` are: nothing a fitting measured candidate
    covers (it is the more accurate), nothing that covers one measured over the budget (a
    larger network of the family is slower), and nothing measured already."""
    done = {c.key for c in measured}
    fit = [m for m in measured if budget.fits(m)]
    slow = [m for m in measured if not budget.fits(m)]
    return [
        c
        for c in remaining
        if c.key not in done
        and not any(_covers(m, c) for m in fit)
        and not any(_covers(c, m) for m in slow)
    ]


def pareto_front(candidates: Sequence[Candidate], score: Callable[[Candidate], float]) -> list:
    """Candidates that no other is both faster (measured) and better (``score``) than."""
    front = []
    for c in candidates:
        beaten = any(
            o is not c
            and o.measured_ms <= c.measured_ms
            and score(o) >= score(c)
            and (o.measured_ms < c.measured_ms or score(o) > score(c))
            for o in candidates
        )
        if not beaten:
            front.append(c)
    return sorted(front, key=lambda c: c.measured_ms)


# --------------------------------------------------------------------------- measure, train


def measure_candidates(
    candidates: Sequence[Candidate],
    config: ChooseConfig,
    in_chans: int,
    num_classes: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Export each candidate (BatchNorm folded, fp32) and time them in the runtime, all in
    interleaved rounds; fills in ``measured_ms`` (fastest call) and ``median_ms``."""
    sessions = {}
    for i, c in enumerate(candidates):
        path = Path(config.out) / "onnx" / f"{c.key}.onnx"
        if not path.is_file():
            recipe = TrainConfig(model=c.model, width_mult=c.width_mult, resolution=c.resolution)
            kwargs = model_kwargs(recipe, num_classes, in_chans, c.resolution)
            model = create_model(c.model, **kwargs).eval()
            with atomic_path(path) as tmp:
                write_onnx(fold_batchnorm(model), tmp, (in_chans, c.resolution, c.resolution), {})
        if progress is not None:
            progress(i + 1, len(candidates))
        sessions[c.key] = create_session(path, config.threads or None, RUNTIMES[config.runtime])
    feeds = {
        key: {
            s.get_inputs()[0].name: np.random.default_rng(0)
            .standard_normal((1, *s.get_inputs()[0].shape[1:]))
            .astype(np.float32)
        }
        for key, s in sessions.items()
    }
    calls = {key: (lambda s=s, f=feeds[key]: s.run(None, f)) for key, s in sessions.items()}
    for call in calls.values():  # warm-up: first-run planning, allocations
        call()
        call()
    times = time_interleaved(calls, config.rounds, per_round=2, settle=1)
    for c in candidates:
        c.measured_ms = 1e3 * min(times[c.key])
        c.median_ms = 1e3 * float(np.median(times[c.key]))


def train_candidate(c: Candidate, config: ChooseConfig) -> None:
    """Short-train ``c`` into ``OUT/runs/KEY``, resuming an interrupted run; record top-1."""
    run_dir = Path(config.out) / "runs" / c.key
    finished = False
    if holds_run(run_dir):
        try:
            finished = read_run_info(run_dir).finished
        except MobileNetError:
            finished = False
    if not finished:
        recipe = TrainConfig(
            model=c.model,
            data=config.data,
            width_mult=c.width_mult,
            resolution=c.resolution,
            epochs=config.epochs,
            seed=config.seed,
            quiet=config.quiet,
            out=str(run_dir),
        )
        if holds_run(run_dir):
            recipe = TrainConfig(resume=str(run_dir), quiet=config.quiet)
        train(recipe)
    info = read_run_info(run_dir)
    c.run_dir, c.epochs_trained = str(run_dir), info.epoch
    c.accuracy = float(info.metrics["test_top1"])


def full_train_command(c: Candidate, data: str | None) -> str:
    """The command that trains the recommended network with the full default recipe."""
    words = ["mobilenets", "train", "--model", c.model]
    if c.width_mult is not None:
        words += ["--width-mult", f"{c.width_mult:g}"]
    words += ["--resolution", str(c.resolution)]
    if data is not None:
        words += ["--data", data]
    return " ".join(shlex.quote(w) for w in words)


# --------------------------------------------------------------------------- the whole choice


def _save_state(out: Path, config: ChooseConfig, budget: Budget, measured: Sequence[Candidate]):
    atomic_write_json(
        out / STATE_FILE,
        {
            "version": STATE_VERSION,
            "budget": dataclasses.asdict(budget),
            "settings": _settings(config),
            "measured": [dataclasses.asdict(c) for c in measured],
        },
    )


def _settings(config: ChooseConfig) -> dict[str, Any]:
    """What the recorded measurements depend on: a rerun with other settings starts over."""
    return {
        "data": config.data,
        "runtime": config.runtime,
        "threads": config.threads,
        "epochs": config.epochs,
        "seed": config.seed,
    }


def _load_state(out: Path, config: ChooseConfig) -> dict[str, Candidate]:
    """The candidates measured (and trained) by an earlier run of the same choice."""
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION or state.get("settings") != _settings(config):
            return {}
        known = {f.name for f in dataclasses.fields(Candidate)}
        done = [Candidate(**{k: v for k, v in c.items() if k in known}) for c in state["measured"]]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MobileNetError(f"{path} is not a choose state file ({e}); remove it") from None
    return {c.key: c for c in done}


def train_within_budget(
    fitting: list[Candidate],
    config: ChooseConfig,
    started: float,
    say: Callable[[str], None],
    save: Callable[[], None],
) -> list[str]:
    """Short-train the largest fitting candidates (up to ``config.max_train``) while the time
    budget allows, each estimated from the last one's seconds per mult-add; the notes say who
    was left out."""
    notes = []
    order = sorted(fitting, key=lambda c: -c.macs)[: config.max_train]
    last_s, last_macs = None, None
    for c in order:
        if c.accuracy is not None and c.epochs_trained >= config.epochs:
            continue
        elapsed = time.monotonic() - started
        estimate = 0.0 if last_s is None else last_s * c.macs / last_macs
        if elapsed + estimate > config.time_budget_s:
            notes.append(f"time budget reached: {c.label} was not trained")
            continue
        say(f"training {c.label} for {config.epochs} epochs")
        t0 = time.monotonic()
        train_candidate(c, config)
        last_s, last_macs = time.monotonic() - t0, c.macs
        save()
    return notes


def choose(
    budget: Budget,
    config: ChooseConfig,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> Choice:
    """Run the whole choice (see the module docstring) and return its outcome."""
    config.validate()
    started = time.monotonic()
    out = Path(config.out)
    calibration = load_calibration(config.runtime, config.threads, say=say)
    bundle = load_data(config.data, seed=config.seed)
    in_chans, num_classes = bundle.input_size[0], len(bundle.class_names)

    def step(label: str) -> Callable[[int, int], None]:
        return lambda i, n: progress(label, i, n) if progress is not None else None

    candidates = enumerate_candidates(
        config, calibration, num_classes, in_chans, step("pricing candidates")
    )
    if not candidates:
        raise MobileNetError("no family accepts these widths and resolutions")
    possible = [c for c in candidates if budget.may_fit(c)]
    if not possible:
        raise MobileNetError(nothing_fits(budget, candidates))
    done = _load_state(out, config)

    def save(measured: list[Candidate]) -> None:
        _save_state(out, config, budget, measured)

    to_measure: list[Candidate] = []
    remaining = possible
    for _ in range(MEASURE_ROUNDS):
        batch = frontier(remaining)[: config.max_measure]
        if not batch:
            break
        for c in batch:
            if c.key in done:
                for f in ("measured_ms", "median_ms", "accuracy", "run_dir", "epochs_trained"):
                    setattr(c, f, getattr(done[c.key], f))
        pending = [c for c in batch if c.measured_ms is None]
        to_measure += batch
        if pending:
            say(f"measuring {len(pending)} candidates in {config.runtime} (export, then timing)")
            measure_candidates(pending, config, in_chans, num_classes, step("exporting"))
            save(to_measure)
        remaining = descend(remaining, to_measure, budget)
    notes = []
    fitting = [c for c in to_measure if budget.fits(c)]
    if not fitting:
        fastest = min(to_measure, key=lambda c: c.measured_ms)
        raise MobileNetError(
            f"no candidate fits the budget as measured: the fastest near the frontier, "
            f"{fastest.label}, takes {fastest.measured_ms:.2f} ms in {config.runtime}"
        )
    if config.epochs:
        notes += train_within_budget(fitting, config, started, say, lambda: save(to_measure))
    scored = [c for c in fitting if c.accuracy is not None] if config.epochs else fitting
    if not scored:
        raise MobileNetError("no candidate was trained within the time budget; raise it")
    score = (lambda c: c.accuracy) if config.epochs else (lambda c: c.macs)
    front = pareto_front(scored, score)
    best = max(front, key=lambda c: (score(c), -c.measured_ms))
    return Choice(
        budget=budget,
        candidates=candidates,
        measured=to_measure,
        front=front,
        recommended=best,
        train_command=full_train_command(best, config.data),
        out=out,
        notes=notes,
    )


def choice_markdown(choice: Choice, config: ChooseConfig) -> str:
    """The measured candidates as a markdown table, front marked, and the recommendation."""
    lines = [
        "| model | width | resolution | MMACs | params (M) | peak MiB | predicted ms "
        "| measured ms | median ms | top-1 | fits | front |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(choice.measured, key=lambda c: c.measured_ms or 0):
        acc = "-" if c.accuracy is None else f"{c.accuracy:.2%}"
        lines.append(
            f"| {c.model} | {c.width:g} | {c.resolution} | {c.macs / 1e6:.1f} "
            f"| {c.params / 1e6:.2f} | {c.peak_mib:.2f} | {c.predicted_ms:.3f} "
            f"| {c.measured_ms:.3f} | {c.median_ms:.3f} | {acc} "
            f"| {'yes' if choice.budget.fits(c) else 'no'} | {'*' if c in choice.front else ''} |"
        )
    if choice.recommended is not None:
        lines += ["", f"Recommended: {choice.recommended.label}; train it fully with", ""]
        lines += [f"    {choice.train_command}"]
    return "\n".join(lines) + "\n"


def default_out(data: str | None) -> str:
    name = "digits" if data in (None, "digits") else Path(data).name
    return os.path.join("runs", "choose", name)
