"""Exported programs on their own (issue 32): ``evaluate`` scores one in its runtime on the
labelled held-out split beside the run's fp32 weights, ``predict`` classifies images with it,
and ``export --int8`` calibrates on training images only.

Programs are the session's int8 exports of the suite's small digits V2 (16 px,
:func:`conftest.exported`), each with the copy of the run it was exported from.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from conftest import check_one_line_error

from mobilenets.cli import main
from mobilenets.deploy.export import FORMATS
from mobilenets.deploy.images import calibration_inputs
from mobilenets.deploy.program import read_program_info
from mobilenets.deploy.runtime import RUN_DIR_KEY, set_metadata
from mobilenets.evaluation.evaluate import evaluate_model, evaluate_program
from mobilenets.evaluation.predict import predict
from mobilenets.runs import load_run, load_run_data, read_run_info

pytestmark = pytest.mark.forked  # ExecuTorch, LiteRT and OpenVINO stay out of the suite


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_evaluate_scores_a_program_in_its_runtime_beside_the_fp32_run(fmt, exported, digit_pngs):
    program = exported(fmt, True)
    run_dir, path = program.run, program.path
    info = read_program_info(path)
    assert info.precision == "int8" and info.class_names == [str(d) for d in range(10)]
    assert info.run_dir() == run_dir.resolve()  # recorded at export: not the program's folder
    report = evaluate_program(path)
    model, run = load_run(run_dir)
    test = load_run_data(run).test
    assert report.result.num_images == len(test)  # the whole labelled held-out split
    assert report.runtime == FORMATS[fmt].runtime and report.precision == "int8"
    assert report.fp32 is not None and report.run_dir == str(run_dir.resolve())
    assert report.fp32.top1 == evaluate_model(model, test, run.class_names).top1
    assert abs(report.top1_change) < 0.1  # int8 of the same model, not another one
    assert sum(map(sum, report.result.confusion)) == len(test)

    rows = predict(path, [p for p, _ in digit_pngs]).predictions
    assert len(rows) == len(digit_pngs) and all(r.error is None for r in rows)
    right = sum(r.classes[0] == str(label) for r, (_, label) in zip(rows, digit_pngs, strict=True))
    fp32_rows = predict(run_dir, [p for p, _ in digit_pngs]).predictions
    agree = sum(a.classes[0] == b.classes[0] for a, b in zip(rows, fp32_rows, strict=True))
    assert right >= 12 and agree >= 16  # the run's preprocessing, in the program's runtime


@pytest.mark.slow
def test_the_cli_evaluates_and_predicts_with_a_program(exported, tmp_path, digit_pngs, capsys):
    program = exported("onnx", True)
    run, path = program.run, program.path
    assert main(["evaluate", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["fp32"]["num_images"] == report["num_images"]
    assert report["top1_change"] == pytest.approx(report["top1"] - report["fp32"]["top1"])
    assert main(["evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "run fp32, PyTorch" in out and "points" in out and "Per-class accuracy" in out
    assert main(["predict", str(path), str(digit_pngs[0][0]), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split(",")[1] in "0123456789"
    # the program's mean answer over test-time views, as the run's (int8 rounding apart)
    paths = [p for p, _ in digit_pngs]
    viewed = predict(path, paths, tta="flips").predictions
    fp32_viewed = predict(run, paths, tta="flips").predictions
    agree = sum(a.classes[0] == b.classes[0] for a, b in zip(viewed, fp32_viewed, strict=True))
    assert agree >= 0.8 * len(paths)

    # moved away from a run that is gone: scored alone, and the output says why
    moved = tmp_path / "moved.onnx"
    model = onnx.load(str(path))
    set_metadata(model, {RUN_DIR_KEY: str(tmp_path / "gone")})
    onnx.save(model, str(moved))
    report = evaluate_program(moved)
    assert report.fp32 is None and "not there" in report.fp32_note
    assert main(["evaluate", str(moved)]) == 0
    assert "no fp32 score: the run directory" in capsys.readouterr().out
    # a run directory whose weights are gone: scored alone, the note says what is missing
    (tmp_path / "gone").mkdir()
    shutil.copy(run / "model.json", tmp_path / "gone")
    report = evaluate_program(moved)
    assert report.fp32 is None and "model.safetensors is missing" in report.fp32_note


@pytest.mark.slow
def test_a_program_refuses_data_of_other_classes(exported, tmp_path, digit_pngs, capsys):
    path = exported("onnx", True).path
    for name, (png, _) in zip(["a", "a", "b", "b"], digit_pngs, strict=False):
        (tmp_path / "other" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, tmp_path / "other" / name)
    plot = tmp_path / "cm.png"
    argv = ["evaluate", str(path), "--data", str(tmp_path / "other"), "--plot", str(plot)]
    check_one_line_error(argv, "has classes [a, b] (2) but the model was trained on", capsys)
    assert not plot.exists()


def test_a_program_without_class_names_is_one_line(tmp_path, digit_pngs, capsys):
    pte = tmp_path / "model.int8.pte"  # moved without the .json written beside it
    pte.write_bytes(b"\0" * 64)
    for argv in (["evaluate", str(pte)], ["predict", str(pte), str(digit_pngs[0][0])]):
        check_one_line_error(argv, "model.int8.pte.json is not beside it", capsys)
    bare = tmp_path / "bare.onnx"  # an ONNX file from elsewhere: no mobilenets metadata
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 16, 16])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), str(bare))
    check_one_line_error(["evaluate", str(bare)], "bare.onnx records no class names", capsys)
    (tmp_path / "notes.txt").write_text("hi")
    check_one_line_error(
        ["predict", str(tmp_path / "notes.txt"), str(digit_pngs[0][0])],
        "neither a run directory nor an exported program (.onnx, .pte, .tflite or .xml)",
        capsys,
    )
    check_one_line_error(
        ["evaluate", str(tmp_path / "gone.tflite")], "gone.tflite does not exist", capsys
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bare.onnx",
        "model.int8.pte",
        "notes.txt",
    ]


def test_int8_calibrates_on_training_images_only(trained_v2):
    """The calibration images are training images, none of them in the held-out split that
    ``evaluate`` scores a program on."""
    info = read_run_info(trained_v2)
    batches, what = calibration_inputs(info, None, 16)
    calibration = torch.cat(batches)
    bundle = load_run_data(info)
    train = torch.stack([bundle.train_raw[i][0] for i in range(len(bundle.train_raw))])
    test = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
    assert what == "training images" and len(calibration) == 16

    def found(images: torch.Tensor, pool: torch.Tensor) -> list[bool]:
        flat = pool.flatten(1)
        return [bool((flat == x.flatten()).all(1).any()) for x in images]

    assert all(found(calibration, train))
    assert not any(found(calibration, test))
