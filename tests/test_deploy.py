"""Deployment: BN folding, ONNX export checked in onnxruntime, int8 quantization, the bench,
and the one-line errors that leave no file behind.

A small MobileNetV2 (width 0.35) is trained briefly on the embedded digits at 16 px, so the
exported and quantized models are compared on real held-out images with real predictions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import check_one_line_error, copy_run, raises_one_line, randomize_batchnorm
from torch.utils.data import Subset

from mobilenets import create_model
from mobilenets.analysis.cost import profile_model
from mobilenets.cli import main
from mobilenets.data import load_data
from mobilenets.deploy import (
    count_batchnorms,
    create_session,
    export_onnx,
    fold_batchnorm,
    load_onnx,
    quantize_onnx,
    run_info_of,
    unfold_into,
)
from mobilenets.deploy.compat import compare_with_torch
from mobilenets.deploy.quantize import opset_of, quantize_model, residual_stream_overrides
from mobilenets.deploy.runtime import check_provider, run_session, top1_accuracy
from mobilenets.errors import MobileNetError
from mobilenets.runs import WEIGHTS_FILE, load_run, read_run_info

RESOLUTION = 16
UINT8, UINT16 = onnx.TensorProto.UINT8, onnx.TensorProto.UINT16


@pytest.fixture(scope="module")
def digits():
    return load_data(None, resolution=RESOLUTION, augment=False)


@pytest.fixture(scope="module")
def run(trained_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conftest's V2: these tests export into it, which records in its model.json."""
    return copy_run(trained_v2, tmp_path_factory.mktemp("deploy") / "run")


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    assert main(["export", str(run)]) == 0
    return run / "model.onnx"


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_folding_keeps_outputs_within_1e5_on_real_images(name: str, digits) -> None:
    model = randomize_batchnorm(
        create_model(name, num_classes=10, width_mult=0.5, small_input=True)
    )
    images = torch.stack([digits.test[i][0] for i in range(64)])
    folded = fold_batchnorm(model)

    assert count_batchnorms(folded) == 0
    assert count_batchnorms(model) > 0  # the original is untouched
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    with torch.no_grad():
        expected, got = model(images), folded(images)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-5


def test_a_trained_folded_model_unfolds_into_an_ordinary_one(digits) -> None:
    """Weights trained in folded form go back into the model with each BatchNorm the identity
    plus the bias: the model computes what the folded one does, and folding it again gives
    the trained weights exactly."""
    model = randomize_batchnorm(create_model("mobilenet_v3_small", num_classes=10, width_mult=0.5))
    folded = fold_batchnorm(model)
    with torch.no_grad():
        for p in folded.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images = torch.stack([digits.test[i][0] for i in range(8)])
    unfolded = unfold_into(copy.deepcopy(model), folded).eval()
    assert unfolded.state_dict().keys() == model.state_dict().keys()
    refolded = fold_batchnorm(unfolded)
    assert all(
        torch.equal(a, b)
        for a, b in zip(refolded.state_dict().values(), folded.state_dict().values(), strict=True)
    )
    with torch.no_grad():
        expected = folded(images)
        assert (unfolded(images) - expected).abs().max() / expected.abs().max() < 1e-5


# --------------------------------------------------------------------------- export


def test_export_writes_onnx_with_dynamic_batch_and_metadata(run: Path, exported: Path) -> None:
    model = load_onnx(exported)
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value

    props = {p.key: p.value for p in model.metadata_props}
    _, info = load_run(run)
    assert json.loads(props["class_names"]) == info.class_names
    assert json.loads(props["input_size"]) == [3, RESOLUTION, RESOLUTION]
    assert np.allclose(json.loads(props["mean"]), info.mean)
    assert np.allclose(json.loads(props["std"]), info.std)
    assert run_info_of(model, exported).model == "mobilenet_v2"


def test_exported_model_agrees_with_pytorch_at_any_batch_size(
    run: Path, exported: Path, digits
) -> None:
    torch_model, _ = load_run(run)
    session = create_session(exported, threads=1)
    for n in (1, 5, 64):
        images = torch.stack([digits.test[i][0] for i in range(n)])
        with torch.no_grad():
            expected = torch_model(images).numpy()
        got = run_session(session, images)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert top1_accuracy(session, digits.test) > 0.5  # it learned something: a real test


def test_a_model_that_differs_from_the_file_is_caught(run: Path, exported: Path, digits) -> None:
    other = randomize_batchnorm(load_run(run)[0], seed=1)
    images = [torch.stack([digits.test[i][0] for i in range(8)])]
    with pytest.raises(MobileNetError, match="differs from PyTorch"):
        compare_with_torch(exported, other, images)


# --------------------------------------------------------------------------- quantization


def test_quantize_gives_a_smaller_int8_model_that_predicts_like_fp32(
    exported: Path, tmp_path: Path, digits
) -> None:
    """``quantize_onnx`` of an exported file: the export pipeline on the run it came from,
    its report the export's (top-1 agreement with PyTorch on the held-out images)."""
    out = tmp_path / "model.int8.onnx"
    result = quantize_onnx(exported, calibration=128, out=out)
    assert result.precision == "int8" and result.path == out and result.calibration_images == 128

    model = load_onnx(out)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mobilenets.precision"] == "int8" and "class_names" in props
    assert result.size_bytes < exported.stat().st_size / 2  # tiny: scales weigh relatively more
    assert result.check.images == min(256, len(digits.test))

    fp32 = create_session(exported)
    int8 = create_session(out)
    images = torch.stack([digits.test[i][0] for i in range(200)])
    agree = (run_session(fp32, images).argmax(1) == run_session(int8, images).argmax(1)).mean()
    assert agree > 0.9
    assert result.check.top1_agreement > 0.9


def test_wide_residuals_keep_the_stream_in_uint16_and_the_convolutions_in_uint8(
    exported: Path, tmp_path: Path, digits
) -> None:
    """Each residual sum is quantized to uint16 and read at 16 bits by the next sum, while
    every convolution still reads uint8 (so onnxruntime keeps its uint8 kernels); the file is
    opset 21, the first whose QuantizeLinear takes 16 bits, and says what it holds."""
    out = tmp_path / "wide.int8.onnx"
    calibration = Subset(digits.train, range(64))
    quantize_model(exported, out, calibration, wide_residuals=True)
    model = load_onnx(out)
    assert opset_of(model) >= 21
    zero_point_types = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def read(node: onnx.NodeProto, index: int) -> tuple[int, str]:
        """The integer type ``node``'s input ``index`` was carried in, and what made it."""
        dequantize = producer[node.input[index]]
        assert dequantize.op_type == "DequantizeLinear"
        quantize = producer[dequantize.input[0]]
        made_by = producer.get(quantize.input[0])  # none: the network's input
        return zero_point_types[dequantize.input[2]], made_by.op_type if made_by else "input"

    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == len(residual_stream_overrides(load_onnx(exported))) > 0
    chained = 0
    for add in adds:
        for index in range(2):
            carried, made_by = read(add, index)
            assert carried == (UINT16 if made_by == "Add" else UINT8), add.name
            chained += made_by == "Add"
    assert chained > 0  # a sum that follows a sum in the same stage reads it at 16 bits
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert read(conv, 0)[0] == UINT8, conv.name
    props = {p.key: p.value for p in model.metadata_props}
    assert "residual stream uint16" in props["mobilenets.quantization"]
    images = torch.stack([digits.test[i][0] for i in range(200)])
    fp32, int8 = create_session(exported), create_session(out)
    assert (run_session(fp32, images).argmax(1) == run_session(int8, images).argmax(1)).mean() > 0.9
    with raises_one_line("needs the qdq format"):
        quantize_model(
            exported,
            tmp_path / "q.onnx",
            calibration,
            quant_format="qoperator",
            wide_residuals=True,
        )
    assert not (tmp_path / "q.onnx").exists()


def activation_scales(path: Path) -> dict[str, float]:
    """The scale of every tensor an int8 QDQ file quantizes at run time (activations: the
    QuantizeLinear nodes whose input is not a stored weight)."""
    model = load_onnx(path)
    stored = {i.name: i for i in model.graph.initializer}
    return {
        node.input[0]: float(onnx.numpy_helper.to_array(stored[node.input[1]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in stored
    }


def test_int8_weights_are_7_bit_and_mean_minmax_narrows_the_ranges(
    exported: Path, tmp_path: Path, digits
) -> None:
    """Without VNNI, onnxruntime adds pairs of uint8 x int8 products in a saturating int16:
    7-bit weights, in [-64, 64], cannot overflow it (255 * 64 * 2 < 32767); full range could.
    ``mean_minmax`` gives each activation the mean of its 8-image batches' ranges: never wider
    than the extremes over all images (``minmax``, the default), narrower for some."""
    calibration = Subset(digits.train, range(64))
    default = quantize_model(exported, tmp_path / "x.onnx", calibration)
    weights = [
        onnx.numpy_helper.to_array(i)
        for i in load_onnx(default).graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")
    ]
    assert len(weights) > 10
    assert all(-64 <= int(w.min()) and int(w.max()) <= 64 for w in weights)
    assert 255 * 64 * 2 < 2**15 - 1 < 255 * 127 * 2

    means = quantize_model(
        exported, tmp_path / "mean.onnx", calibration, calibrate_method="mean_minmax"
    )
    mean, widest = activation_scales(means), activation_scales(default)
    assert mean.keys() == widest.keys() and len(mean) > 10
    assert all(mean[k] <= widest[k] * (1 + 1e-6) for k in mean)
    assert sum(mean[k] < 0.9 * widest[k] for k in mean) > len(mean) / 4
    props = {p.key: p.value for p in load_onnx(means).metadata_props}
    assert "mean_minmax calibration on 64 training images" in props["mobilenets.quantization"]
    assert "7-bit weights" in props["mobilenets.quantization"]


def test_histogram_calibration_takes_a_count_that_is_no_multiple_of_the_batch(
    exported: Path, tmp_path: Path
) -> None:
    """onnxruntime's entropy and percentile calibrators stack all batches into one array: 40
    images in batches of 32 used to fail with "inhomogeneous shape"."""
    for method in ("entropy", "percentile"):
        out = tmp_path / f"{method}.onnx"
        result = quantize_onnx(exported, calibration=40, out=out, calibrate_method=method)
        assert out.is_file() and result.check.top1_agreement > 0.5
        assert result.extra["calibrate_method"] == method


def test_quantize_is_export_int8_onnx(run: Path, exported: Path, tmp_path: Path, capsys) -> None:
    """``quantize RUN`` is ``export RUN --format onnx --int8``: the same file name, the same
    report; its ONNX choices are export's flags too, named in the default file name (the
    names without a choice: test_deploy_targets' ``default_path`` test)."""
    argv = ["--calibration", "32", "--verify-images", "32", "--per-tensor", "--json"]
    assert main(["quantize", str(run), *argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(run / "model.int8-pertensor.onnx")
    assert result["format"] == "onnx" and result["precision"] == "int8"
    assert result["calibration_images"] == 32 and result["per_channel"] is False
    assert result["top1_agreement"] > 0.9
    assert result["size_bytes"] < exported.stat().st_size / 2
    assert main(["export", str(run), "--int8", *argv]) == 0
    exported_report = json.loads(capsys.readouterr().out)
    assert {k for k in exported_report if k != "seconds"} == set(result) - {"seconds"}
    assert exported_report["path"] == result["path"]
    assert exported_report["top1_agreement"] == result["top1_agreement"]
    check_one_line_error(
        ["export", str(run), "--per-tensor", "--out", str(tmp_path / "m.onnx")],
        "--per-tensor is a choice of post-training int8",
        capsys,
    )
    check_one_line_error(
        ["export", str(run), "--format", "openvino", "--opset", "20"],
        "--opset is not an option of OpenVINO export",
        capsys,
    )
    argv = ["quantize", str(run), "--quant-format", "qoperator", "--wide-residuals"]
    check_one_line_error(argv, "needs the qdq format", capsys)
    assert listing(tmp_path) == set()


# --------------------------------------------------------------------------- bench


def test_bench_times_every_engine_side_by_side(run: Path, capsys) -> None:
    """PyTorch's layouts beside onnxruntime; with --no-memory no program is started in a
    process of its own to measure memory (test_deploy_targets measures it in every
    runtime)."""
    argv = ["bench", str(run), "--threads", "1", "--iterations", "5", "--warmup", "1", "--json"]
    assert main([*argv, "--format", "onnx", "--no-memory"]) == 0
    report = json.loads(capsys.readouterr().out)
    info = read_run_info(run)
    assert report["model_name"] == info.model
    assert report["width_mult"] == info.model_kwargs["width_mult"]
    engines = [t["engine"] for t in report["timings"]]
    assert engines == [
        "PyTorch eager NCHW",
        "PyTorch eager channels_last",
        "PyTorch BN folded NCHW",
        "PyTorch BN folded channels_last",
        "onnxruntime fp32",
        "onnxruntime int8",
    ]
    model, _ = load_run(run)
    assert report["macs"] == profile_model(model, RESOLUTION).total_macs
    assert report["matmul_gflops"] > 0 and report["fp32_floor_ms"] > 0
    for t in report["timings"]:
        assert 0 < t["median_ms"] <= t["p90_ms"] and t["iterations"] == 5
        assert t["images_per_s"] == pytest.approx(1000 / t["median_ms"])
        assert t["memory_bytes"] is None and t["startup_bytes"] is None


def test_bench_of_an_onnx_file_prints_a_table(exported: Path, capsys) -> None:
    assert main(["bench", str(exported), "--threads", "1", "--iterations", "5"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32" in out and "GFLOP/s" in out and "mult-adds" in out


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def not_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf\n")
    return path


@pytest.fixture
def no_weights(run: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((run / "model.json").read_text())
    return broken


def test_a_run_without_weights(no_weights: Path, capsys) -> None:
    for verb in (["export"], ["quantize"], ["bench"]):
        check_one_line_error([*verb, str(no_weights)], f"{WEIGHTS_FILE} is missing", capsys)
    assert listing(no_weights) == {"model.json"}


def test_a_file_that_is_not_onnx(not_onnx: Path, capsys) -> None:
    for verb in ("quantize", "bench"):
        check_one_line_error([verb, str(not_onnx)], "is not a valid ONNX model", capsys)
    assert listing(not_onnx.parent) == {"model.onnx"}


def test_a_calibration_count_larger_than_the_data(exported: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(exported), "--calibration", "0", "--out", str(out)]
    check_one_line_error(argv, "must be a positive integer", capsys)
    assert listing(tmp_path) == set()
    # More than there is: a warning, and calibration on every training image.
    assert main([*argv[:3], "100000", *argv[4:], "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: calibration count 100000 is larger than the ")
    assert captured.err.count("\n") == 1
    result = json.loads(captured.out)
    assert 0 < result["calibration_images"] < 100000 and listing(tmp_path) == {"q.onnx"}


def test_a_resolution_the_model_cannot_take(run: Path, exported: Path, capsys) -> None:
    check_one_line_error(["bench", str(run), "--resolution", "4"], "too small", capsys)
    check_one_line_error(["bench", str(exported), "--resolution", "32"], "takes 16x16", capsys)


def test_a_missing_provider_and_a_bad_opset(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    argv = ["quantize", str(run), "--out", str(out), "--provider", "TensorrtExecutionProvider"]
    check_one_line_error(argv, "'TensorrtExecutionProvider' is not available", capsys)
    with pytest.raises(MobileNetError, match="opset"):
        export_onnx(run, out, opset=11)
    assert listing(tmp_path) == set()


@pytest.mark.slow
def test_an_imported_run_exports_checked_on_photos(tmp_path: Path, capsys) -> None:
    """Weights imported from torchvision record no data set: the export check still runs, on
    crops of the bundled photographs, and evaluation asks for --data rather than guessing.
    (A failed check leaves no file, in every format: test_deploy_targets.)"""
    fixture = Path(__file__).parent / "fixtures" / "interop" / "torchvision_mobilenet_v2_035.pth"
    run_dir = tmp_path / "imported"
    argv = ["import", str(fixture), "--source", "torchvision", "--model", "mobilenet_v2"]
    assert main([*argv, "--width-mult", "0.35", "--out", str(run_dir)]) == 0
    capsys.readouterr()
    out = tmp_path / "imported.onnx"
    result = export_onnx(run_dir, out, verify_images=16, opset=20)
    assert result.checked_on.startswith("random crops of the bundled photos")
    assert result.check.max_rel_error <= 1e-4
    # the opset asked for, not the default
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain == ""} == {20}
    check_one_line_error(["evaluate", str(run_dir)], "pass --data", capsys)


# --------------------------------------------------------------------------- providers


def test_provider_short_names() -> None:
    assert check_provider("cpu") == "CPUExecutionProvider"
    assert check_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    with pytest.raises(MobileNetError, match="'tpu' is not available here; available: "):
        check_provider("tpu")


def test_openvino_is_not_an_onnxruntime_provider_here() -> None:
    """OpenVINO's onnxruntime plugin lists no device on non-Intel CPUs; the OpenVINO target
    runs in OpenVINO's own runtime instead, and the error says so."""
    with pytest.raises(MobileNetError, match="mobilenets export --format openvino"):
        check_provider("openvino")
