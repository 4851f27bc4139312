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
    comparison,
    decode,
    detection_agreement,
    graph_of,
    join_outputs,
    segmentation_agreement,
    separate_outputs,
)
from mobilenets.deploy.images import batches, run_data
from mobilenets.int8.fake_quant import FakeQuantModel
from mobilenets.models import model_task
from mobilenets.models.multibox import postprocess_detections
from mobilenets.quant.sensitivity import measure_sensitivity
from mobilenets.runs import DataRecord, RunInfo, load_run, read_run_info, save_run
from mobilenets.train.segmentation_metrics import evaluate_segmenter

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


def test_a_litert_detector_has_two_outputs_its_runner_joins() -> None:
    """LiteRT quantizes a program's outputs: the logits and the offsets get a range each."""
    model = small("ssdlite_mobilenet_v3_small")
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        joined = graph_of(model)(images).numpy()
        two = [t.numpy() for t in separate_outputs(graph_of(model))(images)]
    assert [t.shape[-1] for t in two] == [len(CANVAS_CLASSES), 4]
    assert np.array_equal(join_outputs(two), joined) and join_outputs([joined]) is joined
    segmenter = small("lraspp_mobilenet_v3_small")
    assert separate_outputs(segmenter) is segmenter


def test_the_int8_simulator_runs_a_head_whole_and_ranks_its_layers() -> None:
    """sensitivity / quantize-mixed on heads: a head is one stage of the simulator (no
    features -> classifier chain), its layers named as in its program (``detector.``), and
    the agreement is the export check's (pixels here)."""
    size = 32  # its total stride: the graph is what is measured
    model = small("lraspp_mobilenet_v3_small")
    fq = FakeQuantModel(model)
    assert len(fq.stages) == 1 and set(fq.stage_of.values()) == {0}
    images = [torch.randn(1, 3, size, size)]
    fq.calibrate(images)
    info = RunInfo("lraspp_mobilenet_v3_small", {}, list(CANVAS_CLASSES))
    layers, all_sqnr, all_agreement = measure_sensitivity(
        fq, images, compare=comparison(model, info)
    )
    assert len(layers) == len(fq.names()) and 0 < all_agreement <= 1 and all_sqnr > 5
    detector = FakeQuantModel(graph_of(small("ssdlite_mobilenet_v3_small")))
    assert len(detector.stages) == 1
    assert all(name.startswith("detector.") for name in detector.names())
    classifier = FakeQuantModel(create_model("mobilenet_v2", width_mult=0.35, num_classes=4))
    assert len(classifier.stages) > 2  # a classifier's blocks still start from a cached input


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


# Every runtime end to end on the head whose graph it lowers fastest, each head on two
# runtimes: LiteRT takes the detector (its int8 concatenations, ObservedConcats),
# ExecuTorch the segmenter on V2 (lowering grows with the graph's nodes: SSDLite-V3-Small's
# cost it 87 s, LR-ASPP-V3-Small's, with its squeeze-excitations, 1.7 times V2's)
RUNTIMES = [
    ("onnx", "ssdlite_mobilenet_v3_small"),
    ("openvino", "lraspp_mobilenet_v3_small"),
    ("executorch", "lraspp_mobilenet_v2"),
    ("litert", "ssdlite_mobilenet_v3_small"),
]
# ExecuTorch's and LiteRT's writers lower a head in fp32 as in int8, less the quantization
# step, and their fp32 lowering is checked on the classifier (test_deploy_targets): a head's
# fp32 lowering there would add 15-25 s each and check no other code
FP32_HEADS = {"onnx", "openvino"}
# evaluate runs every program through one ProgramModule: the detector's onnx program is scored
# on the held-out canvases (a segmenter's run: test_evaluate_scores_a_dense_run...)
EVALUATED = {"onnx"}
CHECKED = ["--verify-images", "4"]  # a fixed-batch program runs them one by one
CALIBRATION = ["--int8", "--calibration", "4"]


def export_json(run: Path, fmt: str, extra: list[str], capsys) -> dict:
    assert main(["export", str(run), "--format", fmt, *extra, *CHECKED, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "name"), RUNTIMES)
def test_a_head_exports_fp32_and_int8_and_predicts_through_them(
    fmt: str, name: str, head_run, digit_pngs, tmp_path: Path, capsys
) -> None:
    """int8 (and fp32 where :data:`FP32_HEADS` says) written, checked as detections or masks
    and recorded; then ``predict`` runs the int8 program in its runtime and draws what it
    found."""
    run = copy_run(head_run(name), tmp_path / "run")
    detector = model_task(name) == "detection"
    measure = "detections" if detector else "pixels"
    precisions = ["fp32", "int8"] if fmt in FP32_HEADS else ["int8"]
    if "fp32" in precisions:
        fp32 = export_json(run, fmt, [], capsys)
        assert fp32["measure"] == measure and fp32["max_rel_error"] <= 1e-4
        if detector:
            assert fp32["top1_agreement"] >= 0.95 and fp32["box_iou"] > 0.99
    int8 = export_json(run, fmt, CALIBRATION, capsys)
    assert int8["measure"] == measure and int8["calibrated_on"] == "training images"
    assert int8["top1_agreement"] >= 0.5
    if detector:  # every runtime's, LiteRT's included, matches nearly all boxes
        assert int8["top1_agreement"] >= 0.8 and int8["box_iou"] > 0.8
        assert 0 <= int8["score_difference"] < 0.1
    recorded = json.loads((run / "model.json").read_text())["metrics"]["exports"]
    assert {recorded[f"{fmt}-{p}"]["measure"] for p in precisions} == {measure}

    if fmt in EVALUATED:
        assert main(["evaluate", int8["path"], "--json"]) == 0
        scored = json.loads(capsys.readouterr().out)
        keys = {"map", "map_50", "map_75"} if detector else {"miou", "pixel_accuracy"}
        assert scored["precision"] == "int8" and scored["run_dir"] == str(run)
        assert set(scored["fp32"]) == keys == set(scored["change_points"])
        held_out = len(run_data(read_run_info(run), None).test)
        assert scored["data"].startswith(f"{held_out} held-out")

    images = [str(path) for path, _ in digit_pngs[:2]]
    out = tmp_path / "predicted"
    assert main(["predict", int8["path"], *images, "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["images"]
    assert len(rows) == 2 and all(Path(row["png"]).is_file() for row in rows)
    written = "detections.json" if detector else "segmentation.json"
    assert (out / written).is_file()


@pytest.mark.slow
def test_bench_times_a_detector_as_export_writes_it(head_run, capsys) -> None:
    """A detector's programs hold its logits and offsets as one output, as export writes
    them (decoding untimed)."""
    argv = ["bench", str(head_run("ssdlite_mobilenet_v3_small")), "--format", "onnx"]
    argv += ["--threads", "1", "--iterations", "2", "--warmup", "1", "--no-memory", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    engines = {t["engine"] for t in report["timings"]}
    assert {"onnxruntime fp32", "onnxruntime int8"} <= engines and report["resolution"] == SIZE


def test_an_onnx_option_on_a_head_is_still_one_line(head_run, tmp_path: Path, capsys) -> None:
    run = head_run("lraspp_mobilenet_v3_small")
    argv = ["export", str(run), "--format", "litert", "--wide-residuals", "--int8"]
    check_one_line_error([*argv, "--out", str(tmp_path / "m.tflite")], "LiteRT cannot", capsys)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_scores_a_dense_run_as_its_training_does(head_run, capsys) -> None:
    """A segmenter's run is scored in PyTorch on its held-out canvases (mIoU, pixel accuracy:
    what its training reports); a confusion-matrix plot and test-time views are refused in one
    line each."""
    run = head_run("lraspp_mobilenet_v3_small")
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, info = load_run(run)
    expected = evaluate_segmenter(model, batches(run_data(info, None).test), len(CANVAS_CLASSES))
    assert report["engine"] == "PyTorch" and report["fp32"] is None
    assert report["miou"] == pytest.approx(expected["miou"]) and 0 <= report["miou"] <= 1
    check_one_line_error(["evaluate", str(run), "--plot", "x.png"], "--plot is for a", capsys)
    check_one_line_error(["evaluate", str(run), "--tta", "flips"], "--tta is for a", capsys)
