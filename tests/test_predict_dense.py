"""``predict`` on a detector or a segmenter: images drawn with boxes / masks, and one JSON.

The runs are untrained 64 px heads whose last layers are set by hand, so what they find is
known without training: the detector scores class 1 on every default box with zero offsets
(its detections are default boxes), the segmenter gives every pixel class 3. The images are
160 x 96, so every box in the JSON must be a default box scaled by (160 / 64, 96 / 64).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import check_one_line_error
from PIL import Image

from mobilenets.cli import main
from mobilenets.data.canvases import CANVAS_CLASSES
from mobilenets.evaluation.predict_dense import colour
from mobilenets.models import create_model
from mobilenets.models.boxes import clip_boxes
from mobilenets.runs import RunInfo, save_run

SIZE = 64
WIDTH, HEIGHT = 160, 96


def save(directory: Path, name: str, model: torch.nn.Module) -> Path:
    kwargs = {"num_classes": len(CANVAS_CLASSES), "width_mult": 0.35}
    info = RunInfo(name, kwargs, list(CANVAS_CLASSES), input_size=(3, SIZE, SIZE))
    save_run(directory, model, info)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dense-runs")
    torch.manual_seed(0)
    classes = len(CANVAS_CLASSES)
    detector = create_model("ssdlite_mobilenet_v3_large", num_classes=classes, width_mult=0.35)
    with torch.no_grad():
        for head in detector.regression_head:
            head.pointwise.weight.zero_()
            head.pointwise.bias.zero_()
        for head in detector.classification_head:
            head.pointwise.weight.zero_()
            head.pointwise.bias.view(-1, classes).copy_(torch.eye(classes)[1] * 10)
    segmenter = create_model("lraspp_mobilenet_v3_large", num_classes=classes, width_mult=0.35)
    with torch.no_grad():
        for conv in (segmenter.classifier.low_classifier, segmenter.classifier.high_classifier):
            conv.weight.zero_()
            conv.bias.zero_()
        segmenter.classifier.low_classifier.bias[3] = 10
    classifier = create_model("mobilenet_v2", num_classes=classes, width_mult=0.35)
    return {
        "detect": save(root / "detect", "ssdlite_mobilenet_v3_large", detector.eval()),
        "segment": save(root / "segment", "lraspp_mobilenet_v3_large", segmenter.eval()),
        "classify": save(root / "classify", "mobilenet_v2", classifier.eval()),
        "defaults": detector.default_boxes(SIZE),
    }


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    pixels = np.random.default_rng(0).integers(60, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    good = tmp_path / "in" / "scene.png"
    good.parent.mkdir()
    Image.fromarray(pixels).save(good)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not a png")
    return good, bad, pixels


def test_a_detectors_boxes_are_in_the_images_pixels_and_drawn(runs, images, tmp_path) -> None:
    good, bad, pixels = images
    out = tmp_path / "out"
    argv = ["predict", str(runs["detect"]), str(bad), str(good), "--out", str(out), "--json"]
    assert main(argv) == 1  # one image could not be read
    report = json.loads((out / "detections.json").read_text())
    assert report["score_threshold"] == 0.5 and report["task"] == "detection"
    broken, scene = report["images"]
    assert broken["image"] == str(bad) and "cannot read image" in broken["error"]
    assert broken["png"] is None and not (out / "broken.png").exists()
    assert (scene["width"], scene["height"], scene["error"]) == (WIDTH, HEIGHT, None)
    found = scene["detections"]
    assert found and all(d["class"] == "0" and d["score"] > 0.99 for d in found)
    defaults = clip_boxes(runs["defaults"], SIZE, SIZE)
    expected = defaults * torch.tensor([WIDTH / SIZE, HEIGHT / SIZE] * 2)
    boxes = torch.tensor([d["box"] for d in found])
    assert torch.cdist(boxes, expected).min(1).values.max() < 0.1  # each a scaled default
    assert boxes[:, 2].max() > SIZE + 1 and boxes[:, 3].max() <= HEIGHT  # not input pixels
    drawn = np.asarray(Image.open(scene["png"]).convert("RGB"))
    assert drawn.shape == pixels.shape and not np.array_equal(drawn, pixels)
    x1, y1, _, y2 = (round(v) for v in found[0]["box"])
    edge = drawn[(y1 + y2) // 2, max(x1 - 1, 0) : x1 + 2]
    assert (edge == colour(1)).all(1).any(), edge  # the box's left side, in class 1's colour


def test_a_segmenters_mask_is_overlaid_and_counted(runs, images, tmp_path) -> None:
    good, _, pixels = images
    out = tmp_path / "out"
    assert main(["predict", str(runs["segment"]), str(good), "--out", str(out), "--json"]) == 0
    (scene,) = json.loads((out / "segmentation.json").read_text())["images"]
    assert scene["pixel_share"] == {CANVAS_CLASSES[3]: 1.0}
    drawn = np.asarray(Image.open(out / "scene.png").convert("RGB")).astype(float)
    blend = 0.5 * pixels + 0.5 * np.array(colour(3))
    assert np.abs(drawn - blend).max() <= 1  # every pixel is class 3, blended at half


def test_wrong_input_is_one_line(runs, images, tmp_path, capsys) -> None:
    good, _, _ = images
    detect, out = str(runs["detect"]), str(tmp_path / "out")
    check_one_line_error(["predict", detect, str(good)], "give --out DIR", capsys)
    check_one_line_error(
        ["predict", detect, str(good), "--out", out, "--score-threshold", "1.5"],
        "--score-threshold must be in [0, 1], got 1.5",
        capsys,
    )
    check_one_line_error(
        ["predict", str(runs["classify"]), str(good), "--out", out], "--out is for", capsys
    )
    argv = ["predict", detect, str(good), "--out", out, "--tta", "flips"]
    check_one_line_error(argv, "--tta is for a classifier", capsys)
    assert not Path(out).exists()


def test_a_program_is_decoded_by_the_same_code_as_its_run(runs, images, tmp_path, monkeypatch):
    """A stand-in for an exported detector (its runtime's numpy output of the run's graph;
    exporting costs a minute, see tests/test_deploy_heads.py): the default boxes come from the
    record's architecture and the JSON is the run's."""
    import mobilenets.deploy.program as program_module
    from mobilenets.deploy.heads import graph_of
    from mobilenets.runs import load_run

    model, info = load_run(runs["detect"])
    graph = graph_of(model)
    record = SimpleNamespace(run=info)
    monkeypatch.setattr(program_module, "read_program_info", lambda path: record)
    monkeypatch.setattr(
        program_module,
        "load_program",
        lambda path: (lambda x: graph(x).detach().numpy(), record),
    )
    good, _, _ = images
    by_run, by_program = tmp_path / "run", tmp_path / "program"
    assert main(["predict", str(runs["detect"]), str(good), "--out", str(by_run), "--json"]) == 0
    program = str(tmp_path / "detector.onnx")
    assert main(["predict", program, str(good), "--out", str(by_program), "--json"]) == 0
    expected = json.loads((by_run / "detections.json").read_text())["images"][0]
    got = json.loads((by_program / "detections.json").read_text())["images"][0]
    assert got["detections"] == expected["detections"] and got["detections"]
