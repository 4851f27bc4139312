"""``train --task detect|segment``: the detection and segmentation tasks on the one trainer.

The runs are kept short by a few canvases written as the formats users have (COCO JSON, mask
folders) at 64 px: what is tested is that the task trains (the loss falls), is scored by its
own metrics and makes an ordinary run directory, not the fit (benchmarks/train_dense_digits.py
measures that).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import check_one_line_error
from PIL import Image
from safetensors.torch import save_file

from mobilenets.cli import main
from mobilenets.data.canvases import CANVAS_CLASSES, TRUNK_RESOLUTION, digit_canvases
from mobilenets.errors import MobileNetError
from mobilenets.models import create_model
from mobilenets.models.segmentation import LRASPP
from mobilenets.models.ssdlite import SSDLite
from mobilenets.runs import RunInfo, load_run, read_run_info, save_run
from mobilenets.train.finetune import load_trunk_weights
from mobilenets.train.loop import model_kwargs, train
from mobilenets.train.recipe import (
    CANVAS_TRUNK_EPOCHS,
    RECIPES,
    TASK_RECIPES,
    TRAIN_TASKS,
    TrainConfig,
)
from mobilenets.train.run_dir import METRICS_FILE
from mobilenets.train.trunk import TRUNK_DIR, trunk_config, with_trunk_epochs

CANVASES = 8
SHORT = ["--width-mult", "0.35", "--resolution", "64", "--batch-size", "4", "--epochs", "3"]
SHORT += [
    "--optimizer",
    "adamw",
    "--lr",
    "0.003",
    "--warmup-epochs",
    "0",
    "--workers",
    "0",
    "--threads",
    "1",
    "--quiet",
]


def canvas_folders(root: Path, task: str) -> Path:
    """The first canvases as ``train/`` and ``val/`` folders (the same images: the held-out
    score then follows the fit), COCO JSON for ``detect``, image + mask PNGs for ``segment``."""
    canvases, _ = digit_canvases(0)
    for split in ("train", "val"):
        folder = root / split
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        images, annotations = [], []
        for i in range(CANVASES):
            pixels = canvases.images[i, 0].numpy()
            Image.fromarray(pixels).convert("RGB").save(folder / "images" / f"{i}.png")
            mask = canvases.masks[i].numpy().astype(np.uint8)
            Image.fromarray(mask).save(folder / "masks" / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "width": 160, "height": 160})
            for (x1, y1, x2, y2), label in zip(
                canvases.boxes[i].tolist(), canvases.labels[i].tolist(), strict=True
            ):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": label,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": k, "name": name} for k, name in enumerate(CANVAS_CLASSES) if k]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (folder / "instances.json").write_text(json.dumps(coco))
        (folder / "classes.txt").write_text("\n".join(CANVAS_CLASSES) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "scores", "kind"),
    [
        ("detect", ("test_map", "test_map_50", "test_map_75"), SSDLite),
        ("segment", ("test_miou", "test_pixel_accuracy"), LRASPP),
    ],
)
def test_a_dense_task_trains_on_the_one_trainer(
    task: str, scores: tuple[str, ...], kind: type, tmp_path: Path, capsys
) -> None:
    data = canvas_folders(tmp_path / "data", "segment" if task == "segment" else "detect")
    out = tmp_path / "run"
    argv = ["train", "--task", task, "--data", str(data), *SHORT, "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out
    assert ("mAP@.5" if task == "detect" else "mIoU") in lines
    history = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    losses = [h["train_loss"] for h in history]  # SSD's loss falls slower at first
    assert losses == sorted(losses, reverse=True), losses
    assert losses[-1] < (0.9 if task == "detect" else 0.8) * losses[0], losses
    assert all(0.0 <= h[key] <= 1.0 for h in history for key in scores)
    model, info = load_run(out)  # an ordinary run: the head is rebuilt from its record
    assert isinstance(model, kind) and info.class_names == CANVAS_CLASSES
    assert info.train_config["task"] == task and info.finished


@pytest.mark.slow
def test_qat_fine_tunes_a_segmenter_on_its_masks(tmp_path: Path, capsys) -> None:
    """``qat`` on a segmenter trains the fake-quantized graph on the run's masks and scores
    each epoch by held-out mIoU, of the graph and of the float weights it saves (an ordinary
    segmenter run); ``--distill`` (a classifier's logits) and a detector are refused in one
    line, nothing written."""
    data = canvas_folders(tmp_path / "data", "segment")
    source = tmp_path / "run"
    assert (
        main(["train", "--task", "segment", "--data", str(data), *SHORT, "--out", str(source)]) == 0
    )
    capsys.readouterr()
    out = tmp_path / "qat"
    argv = ["qat", str(source), "--out", str(out), "--epochs", "2", "--batch-size", "4"]
    assert main([*argv, "--lr", "0.001", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "miou" and 0.0 <= result["source_score"] <= 1.0
    for record in result["history"]:
        assert 0.0 <= record["fake_quant_miou"] <= 1.0 and 0.0 <= record["float_miou"] <= 1.0
        assert "fake_quant_top1" not in record
    model, info = load_run(out)
    assert isinstance(model, LRASPP) and info.train_config["qat"]["epochs"] == 2

    check_one_line_error([*argv[:2], "--distill"], "--distill matches a classifier", capsys)
    detector = tmp_path / "detector"
    kwargs = {"num_classes": len(CANVAS_CLASSES), "width_mult": 0.35}
    name = "ssdlite_mobilenet_v3_large"
    info = RunInfo(name, kwargs, list(CANVAS_CLASSES), input_size=(3, 64, 64))
    save_run(detector, create_model(name, **kwargs), info)
    check_one_line_error(
        ["qat", str(detector)], "qat fine-tunes classifiers and segmenters", capsys
    )
    assert not (tmp_path / "detector-qat").exists() and not (tmp_path / "run-qat").exists()


def test_a_model_of_another_task_is_refused(capsys) -> None:
    check_one_line_error(
        ["train", "--task", "detect", "--model", "mobilenet_v2"],
        "mobilenet_v2 is a classification model; --task detect needs one of",
        capsys,
    )
    check_one_line_error(
        ["train", "--task", "classify", "--model", "lraspp_mobilenet_v3_large"],
        "is a segmentation model",
        capsys,
    )
    check_one_line_error(
        ["train", "--task", "segment", "--class-weights"], "class weights are for", capsys
    )


def test_a_dense_task_has_its_own_scratch_defaults() -> None:
    """Each task's scratch recipe as ``train`` fills it (what the benchmark measured); a value
    the caller gives, and the finetune recipe, are kept."""
    filled = {task: TrainConfig(task=task).with_recipe() for task in TRAIN_TASKS}
    for task, config in filled.items():
        assert config.epochs == {**RECIPES["scratch"], **TASK_RECIPES.get(task, {})}["epochs"]
    assert filled["detect"].epochs == 50 and filled["segment"].epochs == 12
    assert filled["classify"].epochs == 20
    assert [filled[t].batch_size for t in ("classify", "detect", "segment")] == [32, 32, 16]
    assert TrainConfig(task="segment", batch_size=8).with_recipe().batch_size == 8
    assert TrainConfig(task="detect", epochs=3).with_recipe().epochs == 3
    finetune = TrainConfig(task="detect", recipe_name="finetune").with_recipe()
    assert finetune.epochs == RECIPES["finetune"]["epochs"]


def test_init_starts_a_head_from_a_classifiers_trunk(tmp_path: Path) -> None:
    """``--init`` of a dense task loads every trunk tensor of the classifier, and names the
    first that does not fit (here: SSDLite's reduced tail, which the classifier lacks)."""
    classifier = create_model("mobilenet_v3_large", num_classes=10, width_mult=0.35)
    file = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(file))
    head = create_model("lraspp_mobilenet_v3_large", num_classes=11, width_mult=0.35)
    assert load_trunk_weights(head, str(file)) == len(head.features.state_dict())
    for name, tensor in head.features.state_dict().items():
        assert torch.equal(tensor, classifier.state_dict()[f"features.{name}"]), name
    reduced = create_model("ssdlite_mobilenet_v3_large", num_classes=11, width_mult=0.35)
    with pytest.raises(MobileNetError, match=r"does not hold this head's trunk: .* of shape"):
        load_trunk_weights(reduced, str(file))


def test_a_head_on_the_digit_canvases_first_trains_its_trunk_on_the_digits() -> None:
    """By default only a segmenter on the canvases from random weights pretrains its trunk
    (:data:`CANVAS_TRUNK_EPOCHS`), as its backbone classifier at its width on the digits the
    canvases are drawn from; LR-ASPP there reads its detail map at stride 4. Asked for where
    it cannot apply, it is one line."""
    segment = with_trunk_epochs(TrainConfig(task="segment"))
    assert segment.trunk_epochs == CANVAS_TRUNK_EPOCHS["segment"] == 10
    assert with_trunk_epochs(TrainConfig(task="detect")).trunk_epochs == 0
    assert with_trunk_epochs(TrainConfig(task="segment", init="run")).trunk_epochs == 0
    assert with_trunk_epochs(TrainConfig(task="segment", data="folder")).trunk_epochs == 0
    assert with_trunk_epochs(TrainConfig(task="detect", trunk_epochs=2)).trunk_epochs == 2
    for config, message in [
        (TrainConfig(trunk_epochs=1), "a classifier has none"),
        (TrainConfig(task="segment", data="masks", trunk_epochs=1), "--data masks has none"),
        (TrainConfig(task="segment", init="run", trunk_epochs=1), "both start the trunk"),
        (TrainConfig(task="segment", trunk_epochs=-1), "0 or more"),
    ]:
        with pytest.raises(MobileNetError, match=message):
            with_trunk_epochs(config)
    head = TrainConfig(task="segment", model="lraspp_mobilenet_v2", width_mult=0.35)
    trunk = trunk_config(dataclasses.replace(head, trunk_epochs=3), Path("out/trunk"))
    assert (trunk.task, trunk.model, trunk.width_mult, trunk.data) == (
        "classify",
        "mobilenet_v2",
        0.35,
        "digits",
    )
    assert (trunk.resolution, trunk.small_input, trunk.epochs) == (TRUNK_RESOLUTION, False, 3)
    with pytest.raises(MobileNetError, match="--low-stride is LR-ASPP's"):
        model_kwargs(TrainConfig(model="mobilenet_v2", low_stride=4), 10, 3, 32)


@pytest.mark.slow
def test_an_interrupted_trunk_continues_and_the_head_starts_from_it(tmp_path: Path) -> None:
    """The trunk is a run of its own in OUT/trunk: one left at epoch 1 of 2 (as a command
    stopped there leaves it) is continued by the same command, and the segmenter records it as
    its starting weights, with the stride-4 detail map the canvases default to."""
    out = tmp_path / "seg"
    head = ["--model", "lraspp_mobilenet_v3_small", "--width-mult", "0.35"]
    fast = ["--threads", "1", "--workers", "0", "--quiet"]
    first = TrainConfig(
        task="segment", model="lraspp_mobilenet_v3_small", width_mult=0.35, trunk_epochs=2
    )
    partial = dataclasses.replace(trunk_config(first, out / TRUNK_DIR), stop_after_epoch=1)
    train(dataclasses.replace(partial, threads=1, num_workers=0, quiet=True))
    assert read_run_info(out / TRUNK_DIR).epoch == 1
    argv = ["train", "--task", "segment", *head, "--trunk-epochs", "2", "--resolution", "64"]
    assert main([*argv, "--epochs", "1", "--batch-size", "8", *fast, "--out", str(out)]) == 0
    trunk = read_run_info(out / TRUNK_DIR)
    assert trunk.epoch == 2 and trunk.finished and trunk.model == "mobilenet_v3_small"
    info = read_run_info(out)
    assert info.init_from["path"] == str((out / TRUNK_DIR).resolve())
    assert info.model_kwargs["low_stride"] == 4 and info.train_config["trunk_epochs"] == 2
    assert info.train_config["recipe_name"] == "scratch" and info.finished
