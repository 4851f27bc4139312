"""Every export format, fp32 and int8, written and then checked in the runtime that ships it.

The `test` extra installs all four runtimes (onnxruntime, OpenVINO, ExecuTorch, LiteRT), so
nothing here skips in CI. A small MobileNetV2 (width 0.35) trained briefly on the digits at
16 px gives real held-out images and real predictions to compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import check_one_line_error, copy_run

from mobilenets.cli import main
from mobilenets.deploy import target as target_module
from mobilenets.deploy.export import FORMATS, asked_steps, default_path, equalize_for
from mobilenets.deploy.images import calibration_inputs
from mobilenets.deploy.runtime import onnx_metadata
from mobilenets.deploy.target import agreement
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.runs import load_run, read_run_info

RESOLUTION = 16
pytestmark = pytest.mark.forked  # the runtimes' threads stay out of the suite's process


@pytest.fixture(scope="module")
def run(trained_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conftest's V2 0.35 at 16 px: these tests export into it."""
    return copy_run(trained_v2, tmp_path_factory.mktemp("targets") / "v2")


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fp32_export_matches_pytorch_in_its_own_runtime(fmt: str, exported) -> None:
    target, program = FORMATS[fmt], exported(fmt, False)
    report = program.report
    assert report["max_rel_error"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert report["images"] == 96 and report["checked_on"] == "held-out images"
    # the program and its companions, no temporary left
    assert listing(program.path.parent) - {"run", "report.json", ".built"} == {
        p.name for p in target.files(program.path)
    }
    assert report["size_bytes"] == sum(p.stat().st_size for p in target.files(program.path))
    recorded = read_run_info(program.run).metrics["exports"][f"{fmt}-fp32"]
    assert recorded["max_rel_error"] == report["max_rel_error"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_int8_export_reports_agreement_and_sqnr(fmt: str, exported) -> None:
    target, program = FORMATS[fmt], exported(fmt, True)
    report = program.report
    assert report["images"] == 128 and report["calibration_images"] == 64
    # quantized, and still the model
    assert report["top1_agreement"] >= 0.8 and 5 < report["sqnr_db"] < 60
    assert report["size_bytes"] < exported(fmt, False).report["size_bytes"]
    assert listing(program.path.parent) - {"run", "report.json", ".built"} == {
        p.name for p in target.files(program.path)
    }
    recorded = read_run_info(program.run).metrics["exports"][f"{fmt}-int8"]
    assert recorded["top1_agreement"] == report["top1_agreement"]
    assert recorded["sqnr_db"] == report["sqnr_db"]
    assert recorded["quantization"] == target.quantization == report["quantization"]


def test_an_equalized_int8_export_says_what_it_rescaled(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "eq.int8.onnx"
    steps = ["--equalize", "--adaround", "20", "--bias-correct"]
    argv = ["export", str(run), "--int8", *steps, "--calibration", "32"]
    assert main([*argv, "--verify-images", "64", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["equalization"].startswith("equalized ")
        and "residual streams" in report["equalization"]
    )
    assert report["bias_correction"].startswith("bias-corrected ")
    assert report["rounding"].startswith("adaptively rounded ")
    assert report["top1_agreement"] >= 0.8  # checked against the model as trained
    recorded = read_run_info(run).metrics["exports"]["onnx-int8"]
    assert recorded["equalization"] == report["equalization"]
    assert recorded["bias_correction"] == report["bias_correction"]
    assert recorded["rounding"] == report["rounding"]
    flags = {
        "--equalize": "equalization",
        "--adaround": "AdaRound",
        "--bias-correct": "bias correction",
    }
    for flag, step in flags.items():
        check_one_line_error(
            ["export", str(run), flag, "--out", str(tmp_path / "f.onnx")],
            f"{step} is a step of post-training int8: use it with --int8",
            capsys,
        )
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.parametrize("fmt", ["litert"])
def test_an_adaptively_rounded_pt2e_export_observes_min_max_ranges(
    run: Path, tmp_path: Path, fmt: str, capsys
) -> None:
    """AdaRound rounds each weight for min-max activation ranges; the XNNPACK runtimes'
    quantizers would observe histograms, so the export asks them for min-max (ExecuTorch's
    writer takes the same option to the same PT2E activation config: test_pt2e)."""
    out = tmp_path / f"ar.int8{FORMATS[fmt].suffix}"
    argv = ["export", str(run), "--format", fmt, "--int8", "--adaround", "5"]
    argv += ["--calibration", "16", "--verify-images", "32", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"].startswith(FORMATS[fmt].quantization)
    assert report["quantization"].endswith("activation ranges min-max, as AdaRound rounded for")
    assert report["top1_agreement"] >= 0.8 and out.is_file()


# ExecuTorch's writer adds the streams in float with the same PT2E step: test_pt2e checks it
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_wide_residuals_are_recorded_where_the_runtime_offers_them(
    run: Path, fmt: str, capsys
) -> None:
    """Written at the default path, which names the step (files made with different steps sit
    side by side); the line says what the file holds; NNCF's progress bars stay off the
    terminal."""
    argv = ["export", str(run), "--format", fmt, "--int8", "--wide-residuals"]
    assert main([*argv, "--calibration", "16", "--verify-images", "32"]) == 0
    captured = capsys.readouterr()
    assert "residual additions wider than int8" in captured.out
    assert "Statistics collection" not in captured.out + captured.err
    out = run / f"model.int8-wide{FORMATS[fmt].suffix}"
    assert all(p.is_file() for p in FORMATS[fmt].files(out))
    recorded = read_run_info(run).metrics["exports"][f"{fmt}-int8"]
    assert recorded["quantization"].endswith("residual additions wider than int8")
    assert recorded["top1_agreement"] >= 0.8


def test_wide_residuals_are_refused_where_they_cannot_be_kept(
    run: Path, tmp_path: Path, capsys
) -> None:
    """LiteRT's converter quantizes an addition left in float again, and fp32 has nothing to
    widen: one line each, no file."""
    out = tmp_path / "wide.int8.tflite"
    argv = ["export", str(run), "--format", "litert", "--int8", "--wide-residuals"]
    check_one_line_error([*argv, "--out", str(out)], "LiteRT cannot keep the residual", capsys)
    argv = ["export", str(run), "--wide-residuals", "--out", str(tmp_path / "f.onnx")]
    check_one_line_error(argv, "wide residuals are a choice of post-training int8", capsys)
    argv = ["quantize-mixed", str(run), "--format", "litert", "--keep", "1", "--wide-residuals"]
    check_one_line_error([*argv, "--out", str(out)], "LiteRT cannot keep the residual", capsys)
    assert listing(tmp_path) == set()


def test_mixed_precision_with_wide_residuals(run: Path, tmp_path: Path, capsys) -> None:
    """Float layers on top of a uint16 residual stream: every int8 file, the all-int8
    baseline included, carries the wide stream."""
    out = tmp_path / "mixed.onnx"
    argv = ["quantize-mixed", str(run), "--keep", "1", "--wide-residuals", "--images", "32"]
    assert main([*argv, "--calibration", "16", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["wide_residuals"] and len(result["mixed"]["fp32_modules"]) == 1
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "residual stream uint16" in props["mobilenets.quantization"]


def test_default_paths_sit_in_the_run_directory(run: Path, capsys) -> None:
    assert main(["export", str(run), "--format", "openvino", "--verify-images", "8"]) == 0
    out = capsys.readouterr().out
    assert "OpenVINO (CPU plugin) matches PyTorch" in out and "replacing" not in out
    assert (run / "model.xml").is_file() and (run / "model.bin").is_file()
    assert main(["export", str(run), "--format", "openvino", "--verify-images", "8"]) == 0
    assert "replacing the file that was there" in capsys.readouterr().out


def test_default_int8_names_say_which_steps_made_them(run: Path) -> None:
    """Each post-training step is named in the default file name, in one order (an export at
    a default path: the wide-residuals test)."""
    onnx_target, openvino_target = FORMATS["onnx"], FORMATS["openvino"]
    assert default_path(run, onnx_target, False) == run / "model.onnx"
    assert default_path(run, onnx_target, True) == run / "model.int8.onnx"
    steps = ["wide_residuals", "equalize", "adaround", "bias_correct"]
    assert default_path(run, openvino_target, True, steps) == (
        run / "model.int8-equalized-adaround-biascorrected-wide.xml"
    )


def test_equalization_is_named_where_it_differs_from_the_formats_default() -> None:
    """ExecuTorch and LiteRT equalize before int8 by default, ONNX and OpenVINO do not: a
    file's name says the choice that was not the default, and the float step is asked
    accordingly."""
    executorch, onnx = FORMATS["executorch"], FORMATS["onnx"]
    defaults = {"onnx": False, "executorch": True, "litert": True, "openvino": False}
    assert {fmt: target.equalize for fmt, target in FORMATS.items()} == defaults
    named = {
        (target.name, equalize): [
            k for k, v in asked_steps(target, equalize, 0, False, False).items() if v
        ]
        for target in (executorch, onnx)
        for equalize in (None, True, False)
    }
    assert named == {
        ("ExecuTorch", None): [], ("ExecuTorch", True): [], ("ExecuTorch", False): ["no_equalize"],
        ("ONNX", None): [], ("ONNX", True): ["equalize"], ("ONNX", False): [],
    }  # fmt: skip
    # None: the format's default, which prepare_for_int8 reads as "wherever the network allows"
    assert [equalize_for(executorch, e) for e in (None, True, False)] == [None, True, False]
    assert [equalize_for(onnx, e) for e in (None, True, False)] == [False, True, False]


def test_an_unknown_format(run: Path, capsys) -> None:
    check_one_line_error(
        ["export", str(run), "--format", "coreml"], "unknown export format", capsys
    )


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"executorch"}, "needs executorch, which is not installed"),
        ({"executorch", "torchao"}, "needs executorch and torchao, which are not installed"),
    ],
)
def test_a_missing_runtime_names_its_extra(
    missing: set[str],
    named: str,
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    real = target_module.importlib.util.find_spec
    monkeypatch.setattr(
        target_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else real(name, *a),
    )
    out = tmp_path / "m.pte"
    argv = ["export", str(run), "--format", "executorch", "--out", str(out)]
    check_one_line_error(argv, named, capsys)
    check_one_line_error(argv, 'pip install "mobilenets[executorch]"', capsys)
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("fmt", ["openvino"])
def test_a_failed_check_leaves_no_file(
    fmt: str, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A tolerance of zero fails every real check: nothing may be left, not even OpenVINO's
    weights file (every format's files are renamed into place by the same step, after the
    check)."""
    monkeypatch.setattr(target_module, "FP32_TOLERANCE", 0.0)
    out = tmp_path / f"model{FORMATS[fmt].suffix}"
    argv = ["export", str(run), "--format", fmt, "--out", str(out), "--verify-images", "8"]
    check_one_line_error(argv, "differs from PyTorch", capsys)
    assert listing(tmp_path) == set()


def test_a_wrong_suffix_is_refused(run: Path, tmp_path: Path, capsys) -> None:
    argv = ["export", str(run), "--format", "litert", "--out", str(tmp_path / "m.onnx")]
    check_one_line_error(argv, "must end in .tflite", capsys)


def test_openvino_mixed_precision_keeps_the_named_modules_in_float(
    run: Path, tmp_path: Path, capsys
) -> None:
    """NNCF leaves the nodes converted from the named modules without FakeQuantize, the IR
    lands whole (.xml and .bin), and a name that is no layer is one line."""
    import openvino as ov

    out = tmp_path / "mixed.xml"
    keep = ["features.0.conv", "classifier.fc"]
    argv = ["quantize-mixed", str(run), "--format", "openvino", "--fp32", *keep]
    assert main([*argv, "--images", "32", "--calibration", "16", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # NNCF's log lines stay off stdout
    assert result["mixed"]["fp32_modules"] == keep and listing(tmp_path) == {
        "mixed.xml",
        "mixed.bin",
    }
    quantized = {}
    for op in ov.Core().read_model(str(out)).get_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
            parents = {i.get_source_output().get_node().get_type_name() for i in op.inputs()}
            quantized[op.get_friendly_name().split("/")[0]] = "FakeQuantize" in parents
    assert not quantized["__module.features.0.conv"] and not quantized["__module.classifier.fc"]
    assert quantized["__module.features.1.depthwise.conv"]
    argv = ["quantize-mixed", str(run), "--format", "openvino", "--fp32", "features.99.conv"]
    argv += ["--out", str(tmp_path / "none.xml")]
    check_one_line_error(argv, "no quantizable layer", capsys)


@pytest.mark.parametrize("fmt", ["litert"])
def test_pt2e_mixed_precision_keeps_the_named_modules_in_float(
    fmt: str, run: Path, tmp_path: Path, capsys
) -> None:
    """Neither XNNPACK's quantizer nor litert-torch's can leave a module in float by name;
    pt2e.FloatModules does it for both. In the LiteRT file the named layers read float32
    weights and every other layer int8; a name that is no layer is one line. The writer is
    called as ``quantize-mixed`` calls it for each candidate (that command runs end to end in
    ONNX and OpenVINO here and in test_int8; ExecuTorch's writer quantizes with the same
    FloatModules: test_pt2e checks its graph)."""
    from ai_edge_litert.interpreter import Interpreter

    model, info = load_run(run)
    calibration, _ = calibration_inputs(info, None, 16)
    out = tmp_path / f"mixed{FORMATS[fmt].suffix}"
    keep = ["features.0.conv", "classifier.fc"]
    metadata = onnx_metadata(info, "int8")
    folded, example = fold_batchnorm(model), calibration[0][:1]
    FORMATS[fmt].write(folded, out, example, calibration, metadata, fp32_modules=keep)
    interpreter = Interpreter(model_path=str(out))
    dtypes = {t["index"]: t["dtype"].__name__ for t in interpreter.get_tensor_details()}
    layers = [
        op
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    ]
    weights = [dtypes[op["inputs"][1]] for op in layers]
    assert weights[0] == weights[-1] == "float32"  # the stem and the classifier
    assert set(weights[1:-1]) == {"int8"}
    argv = ["quantize-mixed", str(run), "--format", fmt, "--fp32", "features.99.conv"]
    check_one_line_error(
        [*argv, "--out", str(tmp_path / f"none{FORMATS[fmt].suffix}")],
        "no quantizable layer",
        capsys,
    )
    assert listing(tmp_path) == {f.name for f in FORMATS[fmt].files(out)}


def test_agreement_measures() -> None:
    expected = np.array([[1.0, 0.0], [0.0, 2.0]])
    same = agreement(expected, expected)
    assert same.max_rel_error == 0 and same.top1_agreement == 1 and same.sqnr_db == float("inf")
    noisy = agreement(expected, expected + np.array([[0.0, 2.0], [0.1, 0.0]]))
    assert noisy.top1_agreement == 0.5
    assert noisy.sqnr_db == pytest.approx(10 * np.log10(5 / 4.01))
    with pytest.raises(MobileNetError, match="shape"):
        agreement(expected, expected[:1])


@pytest.mark.slow
def test_bench_times_runtimes_in_fp32_and_int8(capsys) -> None:
    """``bench`` end to end in onnxruntime, each program's memory measured in a process of its
    own. bench writes and loads every format through the same ``Target`` calls as export (the
    ``exported`` programs check those in all four runtimes), and the memory probe of the other
    three runs on those programs below: lowering eight programs here would add a minute."""
    # the 13-layer separable VGG: lowering is most of this test's time, and it grows with the
    # layers, not their width
    size = 32
    argv = ["bench", "vgg_small_separable", "--width-mult", "0.25", "--resolution", str(size)]
    argv += ["--threads", "1", "--iterations", "3", "--warmup", "1", "--json", "--batch", "2"]
    assert main([*argv, "--format", "onnx"]) == 0
    report = json.loads(capsys.readouterr().out)
    engines = [t["engine"] for t in report["timings"]]
    assert engines[4:] == ["onnxruntime fp32", "onnxruntime int8"]
    assert report["int8_matmul_gops"] > 0 and report["int8_floor_ms"] > 0
    for t in report["timings"][4:]:  # each program's memory, measured in its own process
        assert t["memory_bytes"] is not None and t["model_memory_bytes"] > 0
        assert t["startup_bytes"] is not None and t["planned_bytes"] is None
    assert report["batch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "executorch", "litert"])
def test_memory_of_a_program_is_measured_in_a_process_of_its_own(
    fmt: str, exported, tmp_path: Path
) -> None:
    """bench's memory columns for the runtimes its test above leaves out, on the shared
    programs: the probe's fresh process starts the runtime with a one-layer program of the
    format, then loads and runs the model's; ExecuTorch also reports what its planner laid out."""
    import torch

    from mobilenets.deploy.memory_probe import WARMUP_SHAPE, program_memory_bytes, warmup_model
    from mobilenets.deploy.targets import executorch

    target, program = FORMATS[fmt], exported(fmt, False)
    warmup = tmp_path / f"warmup{target.suffix}"
    metadata = onnx_metadata(read_run_info(program.run), "fp32")
    target.write(warmup_model(), warmup, torch.zeros(WARMUP_SHAPE), None, metadata)
    shape = (1, 3, RESOLUTION, RESOLUTION)
    used = program_memory_bytes(fmt, program.path, warmup, shape, 1)
    assert used["bytes"] is not None and used["bytes"] > 0 and used["startup_bytes"] is not None
    if fmt == "executorch":  # at least the input image crosses the delegate's boundary
        assert executorch.planned_memory_bytes(program.path) >= 4 * np.prod(shape)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_runner_takes_any_array_layout(fmt: str, exported) -> None:
    """CHW crops made from HWC pixels (``np.asarray(img).transpose(2, 0, 1)``), stacked or
    sliced, are strided views, and float64 is numpy's default: each runner gives them the
    logits of the same images laid out contiguously in float32 (ExecuTorch read the raw
    buffer as if it were contiguous, and agreed with itself on 0% of them)."""
    runner = FORMATS[fmt].load(exported(fmt, False).path, None)
    rng = np.random.default_rng(0)
    hwc = rng.standard_normal((4, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    chw = hwc.transpose(0, 3, 1, 2)  # a view: strides of the HWC array
    assert not chw.flags.c_contiguous
    expected = np.concatenate([runner(np.ascontiguousarray(chw[i : i + 1])) for i in range(4)])
    layouts = {
        "transposed": chw,
        "Fortran order": np.asfortranarray(chw),
        "every other image": np.repeat(chw, 2, axis=0)[::2],
        "float64": chw.astype(np.float64),
    }
    for name, images in layouts.items():
        got = np.concatenate([runner(images[i : i + 1]) for i in range(4)])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
