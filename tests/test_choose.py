"""``mobilenets choose``: budgets, pruning by the models, the frontier, the Pareto front, and a
whole (small) choice that measures, trains, writes its table and figure, and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnxruntime as ort
import pytest

from mobilenets.cli import main
from mobilenets.errors import MobileNetError
from mobilenets.latency import machine
from mobilenets.latency.choose import (
    Budget,
    Candidate,
    ChooseConfig,
    default_out,
    descend,
    enumerate_candidates,
    frontier,
    full_train_command,
    nothing_fits,
    pareto_front,
)
from mobilenets.latency.model import LATENCY_KINDS, MEMORY_ONLY_KINDS, Calibration, Roofline
from mobilenets.train.finetune import inherit_init
from mobilenets.train.recipe import TrainConfig


def rates() -> Calibration:
    """Round-number rates for this machine and runtime: pruning depends only on their use."""
    roofs = {
        kind: Roofline(math.inf if kind in MEMORY_ONLY_KINDS else 3e10, 2e10, 2e-6)
        for kind in LATENCY_KINDS
    }
    return Calibration(
        runtime="onnxruntime",
        runtime_version=ort.__version__,
        provider="CPUExecutionProvider",
        threads=0,
        machine=machine.machine_fingerprint(),
        rooflines=roofs,
        node_overhead_s=1e-6,
        run_overhead_s=1e-5,
    )


@pytest.fixture
def cached_rates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calibration:
    monkeypatch.setenv(machine.CACHE_ENV, str(tmp_path / "cache"))
    path = machine.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rates().to_json()))
    return rates()


def candidate(model: str, width: float, resolution: int, **kw) -> Candidate:
    fields = dict(macs=int(1e6 * width * resolution), params=1000, peak_mib=1.0)
    fields.update(predicted_ms=width * resolution / 100)
    fields.update(kw)
    return Candidate(model, width, resolution, **fields)


def test_budget_needs_one_positive_limit() -> None:
    with pytest.raises(MobileNetError, match="give at least one budget"):
        Budget()
    with pytest.raises(MobileNetError, match="latency_ms budget must be a positive number"):
        Budget(latency_ms=-1)
    budget = Budget(latency_ms=2, macs=50e6)
    fast = candidate("a", 0.5, 96, predicted_ms=2.4, macs=40_000_000)
    assert budget.may_fit(fast)  # 20% over the latency budget: within the model's margin
    assert not budget.may_fit(candidate("a", 0.5, 96, predicted_ms=2.6, macs=40_000_000))
    assert budget.counted_excess(candidate("a", 1, 224, macs=60_000_000)) == [
        "60.0M mult-adds > 50.0M"
    ]
    assert not budget.fits(fast)  # not measured yet
    fast.measured_ms = 1.9
    assert budget.fits(fast)


def test_frontier_keeps_the_largest_of_each_family() -> None:
    grid = [candidate(m, w, r) for m in ("a", "b") for w in (0.5, 1.0) for r in (96, 128)]
    grid = [c for c in grid if not (c.model == "a" and c.width == 1.0 and c.resolution == 128)]
    keys = {c.key for c in frontier(grid)}
    assert keys == {"a-w1-r96", "a-w0.5-r128", "b-w1-r128"}


def test_a_family_measured_too_slow_is_measured_one_step_smaller() -> None:
    budget = Budget(latency_ms=2.0)
    grid = [candidate(m, w, r) for m in ("a", "b") for w in (0.5, 1.0) for r in (96, 128)]
    first = {c.key: c for c in frontier(grid)}  # a-w1-r128, b-w1-r128
    first["a-w1-r128"].measured_ms = 2.4  # too slow: only what is smaller is left
    first["b-w1-r128"].measured_ms = 1.5  # fits: nothing smaller of b is worth measuring
    left = descend(grid, list(first.values()), budget)
    assert {c.key for c in left} == {"a-w0.5-r96", "a-w0.5-r128", "a-w1-r96"}
    assert {c.key for c in frontier(left)} == {"a-w0.5-r128", "a-w1-r96"}


def test_pareto_front_is_fastest_for_its_score() -> None:
    cs = [
        candidate("a", 1, 1, measured_ms=1.0, accuracy=0.90),
        candidate("b", 1, 1, measured_ms=2.0, accuracy=0.95),
        candidate("c", 1, 1, measured_ms=2.5, accuracy=0.93),  # slower and worse than b
        candidate("d", 1, 1, measured_ms=3.0, accuracy=0.97),
    ]
    assert [c.model for c in pareto_front(cs, lambda c: c.accuracy)] == ["a", "b", "d"]


def test_candidates_are_built_as_training_builds_them(cached_rates: Calibration) -> None:
    config = ChooseConfig(families=["mobilenet_v2"], widths=[0.5], resolutions=[64, 160])
    small, large = enumerate_candidates(config, cached_rates, num_classes=10, in_chans=1)
    # Below 128 px training uses small_input (total stride 8): 64 px costs more than 160 px.
    assert small.macs > large.macs
    assert small.predicted_ms > 0 and small.params < 2_300_000  # 10 classes, not 1000


def test_families_without_a_width_are_enumerated_once_per_resolution(
    cached_rates: Calibration,
) -> None:
    config = ChooseConfig(families=["efficientnet_b0"], widths=[0.5, 1.0], resolutions=[160, 224])
    found = enumerate_candidates(config, cached_rates, num_classes=10, in_chans=3)
    assert [(c.width, c.resolution) for c in found] == [(1.0, 160), (1.0, 224)]
    # built and trained without a width (train refuses one for such a family)
    assert found[0].width_mult is None and candidate("mobilenet_v2", 0.5, 96).width_mult == 0.5
    recipe = TrainConfig(model=found[0].model, width_mult=found[0].width_mult)
    assert inherit_init(recipe, None).width_mult is None
    assert "--width-mult" not in full_train_command(found[0], None)
    assert "--width-mult 0.5" in full_train_command(candidate("mobilenet_v2", 0.5, 96), None)


def test_nothing_fits_names_what_the_cheapest_needs(
    cached_rates: Calibration, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["choose", "--macs", "1k", "--models", "mobilenet_v2", "--widths", "0.35", "1.0"]
    assert main([*argv, "--resolutions", "128", "224", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no candidate fits the budget: the cheapest, mobilenet_v2 0.35 @128, needs" in err
    assert "M mult-adds" in err
    cheapest = [candidate("a", 0.5, 96, macs=10**7), candidate("b", 1, 96, macs=10**8)]
    assert "a 0.5 @96" in nothing_fits(Budget(macs=1e3), cheapest)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["choose"], "give at least one budget"),
        (["choose", "--latency-ms", "2", "--runtime", "tflite"], "cannot calibrate for runtime"),
        (["choose", "--latency-ms", "2", "--measure", "0"], "--measure must be at least 1"),
    ],
)
def test_choose_rejects_bad_input(
    argv: list[str], message: str, cached_rates: Calibration, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_budget_counts_take_suffixes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["choose", "--macs", "lots"])
    assert exit_info.value.code == 2
    assert "expected a number like 300M" in capsys.readouterr().err


@pytest.mark.slow
def test_a_whole_choice_measures_trains_and_resumes(
    cached_rates: Calibration, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "choice"
    argv = [
        "choose",
        "--latency-ms",
        "1000",
        "--params",
        "5M",
        "--data",
        "digits",
        "--models",
        "mobilenet_v2",
        "vgg_small_separable",
        "--widths",
        "0.35",
        "--resolutions",
        "32",
        "--epochs",
        "1",
        "--train",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "choose.json").read_text())
    measured = {c["model"]: c for c in state["measured"]}
    assert set(measured) == {"mobilenet_v2", "vgg_small_separable"}
    assert all(c["measured_ms"] > 0 for c in measured.values())
    trained = [c for c in measured.values() if c["accuracy"] is not None]
    assert len(trained) == 1 and trained[0]["epochs_trained"] == 1
    assert (out / "pareto.png").stat().st_size > 0
    assert "Recommended:" in printed and "mobilenets train --model" in printed
    assert trained[0]["model"] in (out / "pareto.md").read_text()
    weights = next((out / "runs").glob("*/*.safetensors"))
    before = weights.stat().st_mtime_ns

    assert main([*argv[:-1], "--json"]) == 0  # the same choice again: nothing is redone
    again = json.loads(capsys.readouterr().out)
    assert again["recommended"] == f"{trained[0]['model']}-w0.35-r32"
    assert weights.stat().st_mtime_ns == before


def test_choose_writes_under_runs_by_default() -> None:
    """Its trainings and files sit beside the user's runs (git-ignored), not in the
    working directory's root."""
    assert Path(default_out(None)) == Path("runs", "choose", "digits")
    assert Path(default_out("data/cells")) == Path("runs", "choose", "cells")
    assert Path(ChooseConfig().out) == Path("runs", "choose")
