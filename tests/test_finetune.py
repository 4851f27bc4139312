"""Fine-tuning on real labels: the elpv solar cells (an optional extra, CC BY-NC-SA 4.0 data
that the `test` extra installs) split as their paper did, and the fine-tuning recipe."""

from __future__ import annotations

import gc
import importlib.util
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raises_one_line, randomize_batchnorm, write_digit_png
from sklearn.datasets import load_digits
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from mobilenets.cli import main
from mobilenets.data import TensorImageDataset, elpv_table, load_data
from mobilenets.data.sources import ELPV_TEST_IMAGES
from mobilenets.models import create_model
from mobilenets.runs import ImportRecord, RunInfo, load_state_dict_file, read_run_info, save_run
from mobilenets.train.loop import class_weights, train
from mobilenets.train.optim import make_optimizer
from mobilenets.train.recipe import TrainConfig

SLOW_FIXTURES = {"imported"}  # they train, import or time: conftest marks their tests slow


def test_elpv_split_is_the_papers_protocol() -> None:
    """1,968 cells to train on and 656 to test on (Deitsch et al. 2019), both halves holding
    each (defect probability, cell type) group in the same proportion, the same whatever
    trains; defective means a defect probability of 0.5 or more."""
    table = elpv_table()
    assert len(table.files) == 2624 and all(f.suffix == ".png" for f in table.files[:5])
    train, test = table.split(seed=0)
    assert (len(train), len(test)) == (1968, 656)
    assert ELPV_TEST_IMAGES == 656
    assert not set(train) & set(test)
    groups = [f"{p:.2f}/{t}" for p, t in zip(table.probabilities, table.types, strict=True)]
    everything, held_out = Counter(groups), Counter(groups[i] for i in test)
    for group, n in everything.items():
        assert abs(held_out[group] - n / 4) <= 1, group
    labels = table.labels
    assert labels.sum() == 821 and labels[table.probabilities == 2 / 3].all()
    assert not labels[np.isclose(table.probabilities, 1 / 3)].any()
    assert np.array_equal(table.split(seed=0)[1], test)
    # elpv4: the four defect probabilities as classes, on the same split
    four = table.labels4
    assert Counter(four.tolist()) == {0: 1508, 1: 295, 2: 106, 3: 715}
    assert np.array_equal(four >= 2, labels.astype(bool))


@pytest.mark.slow
def test_elpv_loads_grey_cells_as_three_imagenet_normalised_channels() -> None:
    bundle = load_data("elpv", resolution=32)
    assert (len(bundle.train), len(bundle.test)) == (1968, 656)
    assert bundle.class_names == ["functional", "defective"] and bundle.name == "elpv"
    assert bundle.input_size == (3, 32, 32) and bundle.crop_pct == 1.0
    x, label = bundle.test[0]
    assert x.shape == (3, 32, 32) and label in (0, 1)
    # grey: the three channels hold one image, each normalised with ImageNet's statistics
    pixels = x * torch.tensor(bundle.std).view(3, 1, 1) + torch.tensor(bundle.mean).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
    assert torch.allclose(pixels[1], pixels[2], atol=1e-5)
    a, _ = bundle.train[(0, 7)]
    b, _ = bundle.train[(0, 7)]
    assert torch.equal(a, b)  # augmentation is seeded


def test_elpv_augments_after_the_resize_with_the_same_geometry() -> None:
    """elpv's flips, quarter turns and tilt run on the resized cell (cheaper than at 300 px):
    the augmentation sees the image at the training size, and draws the same transform as
    it would before the resize, so both orders agree but for resampling."""
    seen: list[tuple[int, ...]] = []

    def record(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x

    images = torch.rand(2, 1, 30, 30)
    labels = torch.zeros(2, dtype=torch.long)
    TensorImageDataset(images, labels, 12, (0.5,), (0.5,), record, resize_first=True)[0]
    TensorImageDataset(images, labels, 12, (0.5,), (0.5,), record)[0]
    assert seen == [(1, 12, 12), (1, 30, 30)]
    from mobilenets.data.transforms import random_flips_tilt

    smooth = torch.linspace(0, 1, 60).view(1, 1, 60).expand(1, 60, 60).clone()
    smooth = smooth * smooth.transpose(-1, -2)  # smooth: the two resamplings agree on it
    before = TensorImageDataset(smooth[None], labels[:1], 30, (0.5,), (0.5,), random_flips_tilt)
    after = TensorImageDataset(
        smooth[None], labels[:1], 30, (0.5,), (0.5,), random_flips_tilt, resize_first=True
    )
    for seed in range(8):
        a, b = before[(0, seed)][0], after[(0, seed)][0]
        inner = (slice(None), slice(3, -3), slice(3, -3))  # the tilt's zero-filled corners
        assert (a[inner] - b[inner]).abs().max() < 1e-3, seed


def test_elpv_without_its_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "elpv_dataset" else real(name, *a),
    )
    with raises_one_line(r'pip install "mobilenets\[elpv\]".*CC BY-NC-SA 4.0'):
        load_data("elpv")


# --------------------------------------------------------------------------- the recipe


def digit_folder(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class=(16, 8, 8)) -> Path:
    """An image folder root/<class>/<n>.png of real digits (8x8 grey PNGs), imbalanced."""
    digits = load_digits()
    for c, n in zip(classes, per_class, strict=True):
        (root / str(c)).mkdir(parents=True)
        for i, img in enumerate(digits.images[digits.target == c][:n]):
            write_digit_png(root / str(c) / f"{i}.png", img)
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run as `mobilenets import` writes one: weights and a record, no training."""
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("mobilenet_v2", width_mult=0.35, num_classes=10))
    info = RunInfo(
        model="mobilenet_v2",
        model_kwargs={"width_mult": 0.35, "num_classes": 10},
        class_names=[str(d) for d in range(10)],
        input_size=(3, 16, 16),
        imported_from=ImportRecord(file="/weights/v2.pth", source="torchvision"),
    )
    return save_run(tmp_path_factory.mktemp("imported") / "v2", model, info)


def test_init_fine_tunes_a_new_head_then_the_trunk_and_records_where_from(
    imported: Path, tmp_path: Path
) -> None:
    """`train --init RUN` picks the finetune recipe: epoch 1 trains the new head alone (the
    trunk's weights and BatchNorm statistics stay the imported ones), later epochs the trunk
    too at a tenth of the rate; the run records the recipe and the weights' origin."""
    folder = digit_folder(tmp_path / "three")
    out = tmp_path / "tuned"
    config = TrainConfig(data=str(folder), init=str(imported), epochs=2, batch_size=16)
    train(replace(config, out=str(out), quiet=True, stop_after_epoch=1, num_workers=2))
    # the loaders' workers stop with the run, not in some later garbage collection (which
    # waited out a timeout per worker: tens of seconds in whatever code came next)
    running = [
        it
        for it in gc.get_objects()
        if isinstance(it, _MultiProcessingDataLoaderIter) and not it._shutdown
    ]
    assert not running
    before = load_state_dict_file(imported / "model.safetensors")
    after = load_state_dict_file(out / "model.safetensors")
    trunk = [k for k in before if k.startswith("features.")]
    assert all(torch.equal(before[k], after[k]) for k in trunk)
    assert after["classifier.fc.weight"].shape[0] == 3
    train(TrainConfig(resume=str(out), quiet=True))
    tuned = load_state_dict_file(out / "model.safetensors")
    assert not all(torch.equal(before[k], tuned[k]) for k in trunk)
    info = read_run_info(out)
    recipe = info.train_config
    assert recipe["recipe_name"] == "finetune" and recipe["freeze_epochs"] == 1
    assert (recipe["lr"], recipe["trunk_lr"], recipe["class_weights"]) == (0.01, 0.5, True)
    assert recipe["ema"] == 0.0
    assert info.model_kwargs["width_mult"] == 0.35 and info.input_size == (3, 16, 16)
    origin = info.init_from
    assert origin["path"] == str(imported.resolve()) and origin["model"] == "mobilenet_v2"
    assert origin["imported_from"] == {"file": "/weights/v2.pth", "source": "torchvision"}
    assert info.finished and info.epoch == 2


def test_freeze_bn_keeps_the_batchnorm_statistics_while_the_trunk_trains(
    imported: Path, tmp_path: Path
) -> None:
    """`--freeze-bn`: every BatchNorm layer keeps the running statistics it started with (the
    imported ones), while the trunk's weights, BatchNorm scales and shifts included, train."""
    folder = digit_folder(tmp_path / "three")
    out = tmp_path / "tuned"
    config = TrainConfig(
        data=str(folder), init=str(imported), epochs=2, batch_size=16, freeze_bn=True
    )
    train(replace(config, out=str(out), quiet=True))
    before = load_state_dict_file(imported / "model.safetensors")
    after = load_state_dict_file(out / "model.safetensors")
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    scales = [k for k in before if k.startswith("features.") and k.endswith("bn.weight")]
    assert scales and not all(torch.equal(before[k], after[k]) for k in scales)
    assert read_run_info(out).train_config["freeze_bn"] is True


def test_without_init_the_scratch_recipe_fills_what_is_not_given() -> None:
    scratch = TrainConfig().with_recipe()
    assert (scratch.recipe_name, scratch.lr, scratch.epochs, scratch.freeze_epochs) == (
        "scratch", 0.05, 20, 0
    )  # fmt: skip
    told = TrainConfig(init="run", lr=0.003, recipe_name="finetune").with_recipe()
    assert told.lr == 0.003 and told.trunk_lr == 0.5 and told.class_weights is True
    assert TrainConfig(init="run", recipe_name="scratch").with_recipe().freeze_epochs == 0


def test_the_trunk_learns_at_a_share_of_the_heads_rate() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=3)
    optimizer = make_optimizer(TrainConfig(init="run"), model)
    trunk = {id(p) for p in model.features.parameters()}
    for group in optimizer.param_groups:
        in_trunk = {id(p) in trunk for p in group["params"]}
        assert len(in_trunk) == 1  # a group is trunk or head, never both
        assert group["lr"] == pytest.approx(0.005 if in_trunk.pop() else 0.01)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    adamw = make_optimizer(TrainConfig(optimizer="adamw"), model)
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 2


def test_class_weights_count_every_class_alike() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    dataset = TensorImageDataset(torch.zeros(6, 1, 8, 8), labels, 8, (0.5,), (0.5,))
    weights = class_weights(dataset, 4)
    assert weights.tolist() == pytest.approx([6 / 12, 6 / 4, 6 / 8, 1.0])  # class 3: none
    per_class = torch.bincount(labels, minlength=4).float() * weights
    assert per_class[:3].tolist() == pytest.approx([1.5, 1.5, 1.5])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--freeze-epochs", "5", "--epochs", "2"], "freeze epochs must be in [0, epochs]"),
        (["--trunk-lr", "-1"], "trunk lr must be >= 0"),
    ],
)
def test_bad_fine_tuning_settings_are_one_line(
    argv: list[str], message: str, imported: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    folder = digit_folder(tmp_path / "three")
    assert (
        main(["train", "--data", str(folder), "--init", str(imported), *argv, "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------- a CSV of labels


def test_a_csv_of_files_and_labels_is_a_data_source(tmp_path: Path) -> None:
    digits = load_digits()
    (tmp_path / "cells").mkdir()
    rows = ["file,label,note"]
    for i in range(30):
        name = f"cells/{i}.png"
        write_digit_png(tmp_path / name, digits.images[i])
        rows.append(f"{name},{'even' if digits.target[i] % 2 == 0 else 'odd'},x")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    bundle = load_data(csv_path, resolution=16)
    assert bundle.class_names == ["even", "odd"] and len(bundle.train) + len(bundle.test) == 30
    assert bundle.train[0][0].shape == (3, 16, 16)
    (tmp_path / "missing.csv").write_text("file,label\ncells/0.png,a\nnope.png,b\n")
    with raises_one_line(r"names 1 file\(s\) that do not exist, first: nope.png \(line 3\)"):
        load_data(tmp_path / "missing.csv")
    (tmp_path / "headless.csv").write_text("cells/0.png,a\n")
    with raises_one_line("needs a header with the columns file and label"):
        load_data(tmp_path / "headless.csv")
