"""The run record: typed fields, versioned on disk, and run directories of format version 1
(the untyped ``extra`` dictionary) still load."""

import json

import pytest
import torch
from conftest import raises_one_line
from safetensors.torch import save_file

from mobilenets.errors import MobileNetError
from mobilenets.models import create_model
from mobilenets.runs import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    DataRecord,
    ImportRecord,
    RunInfo,
    load_run,
    load_run_data,
    read_run_info,
    save_run,
)

KWARGS = {"num_classes": 10, "in_chans": 3, "width_mult": 0.35, "dropout": 0.2}
DIGITS_MEAN = [0.3054834188108484] * 3
DIGITS_STD = [0.32370564366816174] * 3


def v1_record(**extra) -> dict:
    """A ``model.json`` exactly as format version 1 (checkpoint.py of release 0.1) wrote it."""
    return {
        "format": "mobilenets-run",
        "version": 1,
        "model": "mobilenet_v2",
        "model_kwargs": {**KWARGS, "small_input": True},
        "class_names": [str(i) for i in range(10)],
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "input_size": [3, 32, 32],
        "epoch": 2,
        "metrics": {"test_top1": 0.5},
        "extra": extra,
    }


def write_v1_run(run_dir, **extra):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", **KWARGS, small_input=True).eval()
    run_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / WEIGHTS_FILE)
    (run_dir / META_FILE).write_text(json.dumps(v1_record(**extra), indent=2))
    return model


def test_version_1_trained_run_loads_with_typed_fields(tmp_path):
    recipe = {"model": "mobilenet_v2", "epochs": 2, "seed": 0}
    data = {"source": None, "name": "digits", "split_seed": 0, "val_fraction": 0.2, "crop_pct": 1.0}
    written = write_v1_run(
        tmp_path / "run",
        finished=True,
        train_config=recipe,
        data=data,
        world_size=1,
    )
    model, info = load_run(tmp_path / "run")
    assert info.data == DataRecord(source=None, name="digits")
    assert info.train_config == recipe and info.finished and info.world_size == 1
    assert info.resolution == 32 and info.crop_pct == 1.0 and info.imported_from is None
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), written(x), rtol=0, atol=0)
    # Its data is rebuilt from the record: the same held-out split the run was tested on.
    bundle = load_run_data(info)
    assert bundle.name == "digits" and len(bundle.test) == 359


def test_version_1_imported_run_loads(tmp_path):
    write_v1_run(tmp_path / "run", imported_from={"file": "/w/m.pth", "source": "timm"})
    info = read_run_info(tmp_path / "run")
    assert info.imported_from == ImportRecord(file="/w/m.pth", source="timm")
    assert info.data is None and info.train_config is None and not info.finished
    with pytest.raises(MobileNetError, match="records no training data"):
        load_run_data(info)


def test_saved_record_is_the_current_version_and_round_trips(tmp_path):
    write_v1_run(tmp_path / "old", data={"source": "digits", "name": "digits"})
    model, info = load_run(tmp_path / "old")
    save_run(tmp_path / "new", model, info)
    on_disk = json.loads((tmp_path / "new" / META_FILE).read_text())
    assert on_disk["version"] == FORMAT_VERSION and "extra" not in on_disk
    assert on_disk["data"]["source"] == "digits"
    assert read_run_info(tmp_path / "new") == info


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": FORMAT_VERSION + 1}, "upgrade mobilenets"),
        ({"format": "other"}, "not a mobilenets run description"),
        ({"extra": ["not", "an", "object"]}, "malformed field"),
        ({"class_names": None}, "malformed field"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, change, message):
    write_v1_run(tmp_path / "run")
    meta = tmp_path / "run" / META_FILE
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **change}))
    with raises_one_line(message):
        read_run_info(tmp_path / "run")


def test_run_info_json_has_no_untyped_extras():
    info = RunInfo(model="mobilenet_v2", model_kwargs={}, class_names=["a", "b"])
    assert "extra" not in info.to_json() and info.to_json()["version"] == FORMAT_VERSION


def test_a_run_describes_its_model_in_words_for_report_headers():
    info = RunInfo.from_json(v1_record(), "model.json")
    assert info.describe() == "mobilenet_v2 (width 0.35, 10 classes, 32 px)"
