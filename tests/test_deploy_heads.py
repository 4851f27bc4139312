"""Detectors and segmenters through the export pipeline (issue 33): the program holds the
raw head outputs, decoding and NMS stay outside, and the check compares what a user gets
(decoded detections: matched-box IoU and score difference; masks: pixel agreement)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import built_once, check_one_line_error, copy_run, randomize_batchnorm

from mobilenets import create_model
from mobilenets.cli import main
from mobilenets.data.canvases import CANVAS_CLASSES
from mobilenets.deploy.heads import (
    DECODE,
    DetectionGraph,
    decode,
    detection_agreement,
    graph_of,
    segmentation_agreement,
)
from mobilenets.models import model_task
from mobilenets.models.multibox import postprocess_detections
from mobilenets.runs import DataRecord, RunInfo, save_run

pytestmark = pytest.mark.forked  # the runtimes' threads stay out of the suite's process

SIZE = 96  # the smallest canvas every head takes (SSDLite's six maps, LR-ASPP's stride 16)


def small(name: str) -> torch.nn.Module:
    model = create_model(name, num_classes=len(CANVAS_CLASSES), width_mult=0.5)
    return randomize_batchnorm(model, seed=3)


def test_a_detector_program_holds_its_raw_outputs_side_by_side() -> None:
    """(N, boxes, classes + 4): the logits, then the offsets; decoding it outside is what
    postprocess_detections gives on the model's own two outputs."""
    model = small("ssdlite_mobilenet_v3_small")
    graph = graph_of(model)
    assert isinstance(graph, DetectionGraph) and graph_of(create_model("mobilenet_v2")) is not None
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        joined, (cls_logits, boxes) = graph(images), model(images)
    assert joined.shape == (1, cls_logits.shape[1], len(CANVAS_CLASSES) + 4)
    defaults = model.default_boxes(SIZE)
    ours = decode(joined.numpy(), defaults, (SIZE, SIZE), **DECODE)
    theirs = postprocess_detections(cls_logits, boxes, defaults, (SIZE, SIZE), **DECODE)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.labels, b.labels) and torch.allclose(a.boxes, b.boxes)


def test_the_detection_check_matches_boxes_and_measures_them() -> None:
    model = small("ssdlite_mobilenet_v3_small")
    with torch.no_grad():
        out = graph_of(model)(torch.randn(2, 3, SIZE, SIZE)).numpy()
    compare = detection_agreement(model.default_boxes(SIZE), (SIZE, SIZE))
    same = compare(out, out.copy())
    assert same.measure == "detections" and same.top1_agreement == 1.0
    assert same.box_iou == 1.0 and same.score_difference == 0.0 and same.max_rel_error == 0.0
    nudged = out.copy()
    nudged[..., -4:] += 0.05  # every box moves a little: all still match, IoU below 1
    moved = compare(out, nudged)
    assert moved.top1_agreement == 1.0 and 0.5 < moved.box_iou < 1.0
    shuffled = out.copy()
    shuffled[..., :-4] = np.random.default_rng(0).permuted(out[..., :-4], axis=1)  # wrong boxes
    assert compare(out, shuffled).top1_agreement < moved.top1_agreement
    assert "box_iou" in moved.to_dict() and moved.to_dict()["measure"] == "detections"


def test_the_segmentation_check_counts_pixels() -> None:
    logits = np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)
    other = logits.copy()
    other[0, :, :4] = other[0, ::-1, :4]  # a quarter of the pixels get another class
    result = segmentation_agreement(logits, other)
    assert result.measure == "pixels" and 0.7 < result.top1_agreement < 0.9
    assert result.to_dict()["measure"] == "pixels" and "box_iou" not in result.to_dict()


def make_head_run(name: str, directory: Path) -> Path:
    """A run of ``name`` on the digit canvases at :data:`SIZE`: seeded weights, randomized
    BatchNorm (untrained heads output almost nothing); checked and calibrated on canvases."""
    torch.manual_seed(0)
    info = RunInfo(
        model=name,
        model_kwargs={"num_classes": len(CANVAS_CLASSES), "width_mult": 0.5},
        class_names=list(CANVAS_CLASSES),
        input_size=(3, SIZE, SIZE),
        data=DataRecord(source="digits", name=f"digits-{model_task(name)}"),
    )
    save_run(directory, small(name), info)
    return directory


@pytest.fixture(scope="module")
def head_run(tmp_path_factory: pytest.TempPathFactory):
    def get(name: str) -> Path:
        return built_once(tmp_path_factory, f"head-{name}", lambda d: make_head_run(name, d))

    return get


# one end-to-end export per runtime, int8 (the writer, the calibration on canvases, the
# check's decoding); the heads alternate so that each is taken by two runtimes
RUNTIMES = [
    ("onnx", "ssdlite_mobilenet_v3_small"),
    ("openvino", "lraspp_mobilenet_v3_small"),
    ("executorch", "ssdlite_mobilenet_v3_small"),
    ("litert", "lraspp_mobilenet_v3_small"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "name"), RUNTIMES)
def test_a_head_exports_int8_checked_as_detections_or_masks(
    fmt: str, name: str, head_run, tmp_path: Path, capsys
) -> None:
    run = copy_run(head_run(name), tmp_path / "run")
    argv = ["export", str(run), "--format", fmt, "--int8", "--calibration", "8"]
    assert main([*argv, "--verify-images", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    detector = model_task(name) == "detection"
    assert report["measure"] == ("detections" if detector else "pixels")
    assert report["top1_agreement"] >= 0.5 and report["calibrated_on"] == "training images"
    if detector:
        assert report["box_iou"] > 0.5 and 0 <= report["score_difference"] < 0.5
    recorded = json.loads((run / "model.json").read_text())["metrics"]["exports"]
    assert recorded[f"{fmt}-int8"]["measure"] == report["measure"]


def test_an_onnx_option_on_a_head_is_still_one_line(head_run, tmp_path: Path, capsys) -> None:
    run = head_run("lraspp_mobilenet_v3_small")
    argv = ["export", str(run), "--format", "litert", "--wide-residuals", "--int8"]
    check_one_line_error([*argv, "--out", str(tmp_path / "m.tflite")], "LiteRT cannot", capsys)
    assert list(tmp_path.iterdir()) == []
