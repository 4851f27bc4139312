"""Import from torchvision and timm checkpoint files, and export back to torchvision's names.

The fixtures in tests/fixtures/interop/ were written by the libraries themselves (see
scripts/make_interop_fixtures.py): state dicts with random weights and random BatchNorm
statistics, fixed inputs, and the source model's eval-mode logits on them. These tests need
neither torchvision nor timm.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import CodeCarrying
from safetensors.torch import load_file, save_file

from mobilenets import MobileNetError, create_model
from mobilenets.cli import main
from mobilenets.data import IMAGENET_MEAN
from mobilenets.interop.checkpoint import read_checkpoint
from mobilenets.interop.weights import (
    from_source_state_dict,
    identify,
    import_checkpoint,
    load_weights,
    model_kwargs,
    to_timm_state_dict,
    to_torchvision_state_dict,
)
from mobilenets.models import (
    EFFICIENTNET_LITE0_TABLE,
    V3_SMALL_TABLE,
    V4_CONV_MEDIUM_TABLE,
    V4_CONV_SMALL_TABLE,
    EfficientNet,
    MobileNetV3,
    MobileNetV4,
)
from mobilenets.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
TV_V2 = FIXTURES / "torchvision_mobilenet_v2_035.pth"
TIMM_V2 = FIXTURES / "timm_mobilenetv2_035.safetensors"
TIMM_V1 = FIXTURES / "timm_mobilenetv1_025.pth"
TV_V3 = FIXTURES / "torchvision_mobilenet_v3_small_head256.pth"
TV_EFFICIENTNET = FIXTURES / "torchvision_efficientnet_w010_d14.safetensors"
TIMM_V3_SMALL = FIXTURES / "timm_mobilenetv3_small_025.safetensors"
TIMM_V3_LARGE = FIXTURES / "timm_mobilenetv3_large_010.pth"
TIMM_EFFICIENTNET = FIXTURES / "timm_efficientnet_w010_d12.pth"
TIMM_LITE = FIXTURES / "timm_efficientnet_lite_w010.safetensors"
TIMM_V4_SMALL = FIXTURES / "timm_mobilenetv4_conv_small_010.pth"
TIMM_V4_MEDIUM = FIXTURES / "timm_mobilenetv4_conv_medium_010.safetensors"

# fixture -> (source, our model with the fixture's architecture, 10 classes). The later
# families are made at small widths with their classes (the registered models have the
# papers' widths); torchvision's V3 with a 256-channel head (see make_interop_fixtures.py).
CASES = {
    TV_V2: ("torchvision", lambda: create_model("mobilenet_v2", num_classes=10, width_mult=0.35)),
    TIMM_V2: ("timm", lambda: create_model("mobilenet_v2", num_classes=10, width_mult=0.35)),
    TIMM_V1: (
        "timm",
        lambda: create_model("mobilenet_v1", num_classes=10, width_mult=0.25, activation="relu6"),
    ),
    TV_V3: ("torchvision", lambda: MobileNetV3(V3_SMALL_TABLE, 256, num_classes=10)),
    TV_EFFICIENTNET: (
        "torchvision",
        lambda: EfficientNet(num_classes=10, width_mult=0.1, depth_mult=1.4),
    ),
    TIMM_V3_SMALL: (
        "timm",
        lambda: create_model("mobilenet_v3_small", num_classes=10, width_mult=0.25, bn_eps=1e-5),
    ),
    TIMM_V3_LARGE: (
        "timm",
        lambda: create_model("mobilenet_v3_large", num_classes=10, width_mult=0.1, bn_eps=1e-5),
    ),
    TIMM_EFFICIENTNET: (
        "timm",
        lambda: EfficientNet(num_classes=10, width_mult=0.1, depth_mult=1.2),
    ),
    TIMM_LITE: ("timm", lambda: EfficientNet(EFFICIENTNET_LITE0_TABLE, 10, width_mult=0.1)),
    TIMM_V4_SMALL: ("timm", lambda: MobileNetV4(V4_CONV_SMALL_TABLE, 10, width_mult=0.1)),
    TIMM_V4_MEDIUM: ("timm", lambda: MobileNetV4(V4_CONV_MEDIUM_TABLE, 10, width_mult=0.1)),
}


def source_io(fixture: Path) -> tuple[torch.Tensor, torch.Tensor]:
    io = load_file(str(fixture.with_suffix(".io.safetensors")))
    return io["inputs"], io["logits"]


def imported(fixture: Path) -> torch.nn.Module:
    source, build = CASES[fixture]
    return load_weights(build(), fixture, source).eval()


def max_abs_diff(model: torch.nn.Module, inputs: torch.Tensor, expected: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(inputs) - expected).abs().max().item()


@pytest.mark.parametrize("fixture", list(CASES), ids=lambda p: p.stem)
def test_outputs_equal_the_source_library(fixture: Path) -> None:
    inputs, logits = source_io(fixture)
    assert logits.abs().max() > 0.4  # the fixture's logits are not trivially small
    assert max_abs_diff(imported(fixture), inputs, logits) <= 1e-5 * logits.abs().max()


REFERENCE = json.loads((FIXTURES / "state_dict_shapes.json").read_text(encoding="utf-8"))
# Reference models that must not import, and what the refusal says.
REFUSALS = {
    "timm mobilenetv1_100h": "have no place in the model",
    "timm mobilenetv2_110d": "have no place in the model",
    # torchvision scales V3's expansions, not their ratios: 48 channels where ours has 64.
    "torchvision mobilenet_v3_large width 0.75": (
        r"features.2.block.0.0.weight has shape \(48, 16, 1, 1\)"
    ),
    "timm efficientnet_b0 as mobilenet_v3_large": (
        "is a timm efficientnet_b0 checkpoint, not a timm mobilenet_v3_large width 1 one"
    ),
    "timm mobilenetv4_conv_large": "have no place in the model",
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_full_size_imagenet_architectures_map_exactly(name: str) -> None:
    """The names and shapes of the libraries' own ImageNet models, both ways."""
    ref = REFERENCE[name]
    source = ref["source"]
    model = create_model(ref["model"], **model_kwargs(source, ref["model"], ref["width_mult"]))
    state = {k: torch.empty(shape) for k, shape in ref["shapes"].items()}
    if not ref["importable"]:
        with pytest.raises(MobileNetError, match=REFUSALS[name]):
            from_source_state_dict(model, state, source)
        return
    assert set(from_source_state_dict(model, state, source)) == set(model.state_dict())
    export = to_torchvision_state_dict if source == "torchvision" else to_timm_state_dict
    assert {k: list(v.shape) for k, v in export(model).items()} == ref["shapes"]
    if source == "timm" or name.endswith(("mobilenet_v3_large", "efficientnet_b2")):
        assert identify(state, source) == name  # and the file says what it is


def test_timm_v1_needs_relu6_and_the_fixture_shows_why() -> None:
    with pytest.raises(MobileNetError, match="ReLU6"):
        load_weights(create_model("mobilenet_v1", width_mult=0.25, num_classes=10), TIMM_V1, "timm")
    relu = create_model("mobilenet_v1", width_mult=0.25, num_classes=10).eval()
    relu.load_state_dict(imported(TIMM_V1).state_dict())
    assert max_abs_diff(relu, *source_io(TIMM_V1)) > 1  # clipping at 6 matters in the fixture


@pytest.mark.parametrize("fixture", list(CASES), ids=lambda p: p.stem)
def test_export_gives_back_the_source_state_dict(fixture: Path) -> None:
    source = CASES[fixture][0]
    export = to_torchvision_state_dict if source == "torchvision" else to_timm_state_dict
    original = read_checkpoint(fixture)
    exported = export(imported(fixture))
    assert sorted(exported) == sorted(original)  # the library's own names, all of them
    for key, tensor in original.items():  # half-precision fixtures: exactly their values
        assert exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key].to(tensor.dtype), tensor), key


def test_torchvision_round_trip_of_our_own_weights() -> None:
    torch.manual_seed(0)
    ours = create_model("mobilenet_v2", width_mult=0.5, num_classes=7).eval()
    back = create_model("mobilenet_v2", width_mult=0.5, num_classes=7).eval()
    state = from_source_state_dict(back, to_torchvision_state_dict(ours), "torchvision")
    back.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), back(x))


def test_torchvision_has_no_v1() -> None:
    with pytest.raises(MobileNetError, match="torchvision has no mobilenet_v1"):
        to_torchvision_state_dict(create_model("mobilenet_v1", width_mult=0.25))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3},
        lambda s: {"model": {f"_orig_mod.{k}": v for k, v in s.items()}, "step": 10},
        lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")},
    ],
    ids=["state_dict+module", "model+compiled", "no_bn_counters"],
)
def test_training_checkpoints_and_stripped_releases_import(wrap, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(read_checkpoint(TV_V2)), path)
    model = load_weights(
        create_model("mobilenet_v2", width_mult=0.35, num_classes=10), path, "torchvision"
    )
    assert max_abs_diff(model.eval(), *source_io(TV_V2)) <= 1e-5


def test_legacy_torch_save_format_reads(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(read_checkpoint(TIMM_V1), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=10, activation="relu6")
    assert max_abs_diff(load_weights(model, path, "timm").eval(), *source_io(TIMM_V1)) <= 1e-5


def test_import_writes_a_run_that_loads(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(10)) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    info = import_checkpoint(TIMM_V2, "timm", "mobilenet_v2", run, width_mult=0.35, labels=labels)
    assert info.class_names[3] == "thing 3"
    model, loaded = load_run(run)
    assert loaded.mean == IMAGENET_MEAN and loaded.input_size == (3, 224, 224)
    assert loaded.model_kwargs == {"width_mult": 0.35, "num_classes": 10}
    assert loaded.imported_from.source == "timm"
    assert max_abs_diff(model, *source_io(TIMM_V2)) <= 1e-5


def test_cli_import_of_timm_v1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "v1"
    argv = ["import", str(TIMM_V1), "--source", "timm", "--model", "mobilenet_v1"]
    assert main([*argv, "--width-mult", "0.25", "--out", str(run)]) == 0
    assert "10 classes" in capsys.readouterr().out
    model, info = load_run(run)
    assert info.model_kwargs["activation"] == "relu6"
    assert info.class_names[0] == "class_0"
    assert max_abs_diff(model, *source_io(TIMM_V1)) <= 1e-5


def test_cli_import_of_timm_v3_keeps_timm_batchnorm_eps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, back = tmp_path / "v3", tmp_path / "back.safetensors"
    argv = ["import", str(TIMM_V3_SMALL), "--source", "timm", "--model", "mobilenet_v3_small"]
    assert main([*argv, "--width-mult", "0.25", "--out", str(run)]) == 0
    model, info = load_run(run)
    assert info.model_kwargs == {"bn_eps": 1e-5, "width_mult": 0.25, "num_classes": 10}
    assert max_abs_diff(model, *source_io(TIMM_V3_SMALL)) <= 1e-5
    assert main(["export-weights", str(run), "--to", "timm", "--out", str(back)]) == 0
    original, exported = read_checkpoint(TIMM_V3_SMALL), read_checkpoint(back)
    assert all(torch.equal(exported[k].half(), v) for k, v in original.items())


def test_released_efficientnet_imports_at_its_own_resolution(tmp_path: Path) -> None:
    """EfficientNet-B2's 1000-class shapes (empty weights): a run at 260 px, as released."""
    ref = REFERENCE["timm efficientnet_b2"]
    path = tmp_path / "b2.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in ref["shapes"].items()}, str(path))
    info = import_checkpoint(path, "timm", "efficientnet_b2", tmp_path / "run")
    assert info.input_size == (3, 260, 260) and info.model_kwargs == {"num_classes": 1000}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_cli_export_weights_gives_back_the_file(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = tmp_path / "run", tmp_path / f"back{suffix}"
    argv = ["import", str(TV_V2), "--source", "torchvision", "--model", "mobilenet_v2"]
    assert main([*argv, "--width-mult", "0.35", "--out", str(run)]) == 0
    assert main(["export-weights", str(run), "--to", "torchvision", "--out", str(out)]) == 0
    assert "314 tensors" in capsys.readouterr().out
    original, back = read_checkpoint(TV_V2), read_checkpoint(out)
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_v1_activation_changes_nothing_but_the_clipping() -> None:
    relu, relu6 = create_model("mobilenet_v1"), create_model("mobilenet_v1", activation="relu6")
    assert {k: v.shape for k, v in relu.state_dict().items()} == {
        k: v.shape for k, v in relu6.state_dict().items()
    }
    assert not any(isinstance(m, torch.nn.ReLU) for m in relu6.modules())
    assert sum(isinstance(m, torch.nn.ReLU6) for m in relu6.modules()) == 27
    with pytest.raises(MobileNetError, match="activation must be one of relu, relu6"):
        create_model("mobilenet_v1", activation="gelu")


def test_relu_v1_is_not_exported_as_timm() -> None:
    with pytest.raises(MobileNetError, match="ReLU6"):
        to_timm_state_dict(create_model("mobilenet_v1", width_mult=0.25))


def bad_files(tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (file, extra CLI flags, expected message)."""
    text = tmp / "notes.pth"
    text.write_text("not a checkpoint\n", encoding="utf-8")
    truncated = tmp / "truncated.pth"
    truncated.write_bytes(TV_V2.read_bytes()[:50_000])
    truncated_st = tmp / "truncated.safetensors"
    truncated_st.write_bytes(TIMM_V2.read_bytes()[:50_000])
    evil = tmp / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": CodeCarrying(tmp / "pwned")}, evil)
    raw_pickle = tmp / "evil.pkl"
    raw_pickle.write_bytes(pickle.dumps(CodeCarrying(tmp / "pwned"), protocol=2))
    whole_model = tmp / "no_state_dict.pt"
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, whole_model)
    resnet = tmp / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, resnet)
    labels = tmp / "labels.txt"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    v2 = ["--source", "torchvision", "--model", "mobilenet_v2", "--width-mult", "0.35"]
    v3 = ["--source", "timm", "--model", "mobilenet_v3_small", "--width-mult"]
    return {
        "text": (text, v2, "is not a checkpoint"),
        "truncated": (truncated, v2, "is truncated or corrupt"),
        "truncated_st": (truncated_st, [*v2[:1], "timm", *v2[2:]], "not a readable safetensors"),
        "code": (evil, v2, "refusing"),
        "raw_pickle": (raw_pickle, v2, "needs more than plain tensors to load (posix.system)"),
        "no_state_dict": (whole_model, v2, "holds no state dict"),
        "other_arch": (resnet, v2, "classifier.1.weight"),
        "other_library": (
            TIMM_V2,
            v2,
            "is a timm mobilenetv2_035 checkpoint, not a torchvision mobilenet_v2 one",
        ),
        "v1_as_v2": (TIMM_V1, ["--source", "timm", "--model", "mobilenet_v2"], "not in the file"),
        "other_width": (TV_V2, [*v2[:-1], "0.5"], "model's features.2.project.conv.weight needs"),
        "labels": (TV_V2, [*v2, "--labels", str(labels)], "has 2 class names"),
        "v1_from_torchvision": (TIMM_V1, [*v2[:3], "mobilenet_v1"], "torchvision has no"),
        "v4_as_v3": (
            TIMM_V4_SMALL,
            [*v3, "0.25"],
            "is not a timm mobilenet_v3_small width 0.25 checkpoint: ",
        ),
        "v3_other_width": (TIMM_V3_SMALL, [*v3, "0.5"], "(another width, class count"),
        "efficientnet_width": (
            TIMM_EFFICIENTNET,
            ["--source", "timm", "--model", "efficientnet_b0", "--width-mult", "0.1"],
            "efficientnet_b0 does not take width_mult",
        ),
        "lite_from_torchvision": (
            TIMM_LITE,
            ["--source", "torchvision", "--model", "efficientnet_lite0"],
            "torchvision has no efficientnet_lite",
        ),
        "v4_width": (
            TIMM_V4_SMALL,
            ["--source", "timm", "--model", "mobilenetv4_conv_small", "--width-mult", "0.1"],
            "mobilenetv4_conv_small does not take width_mult",
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "text",
        "truncated",
        "truncated_st",
        "code",
        "raw_pickle",
        "no_state_dict",
        "other_arch",
        "other_library",
        "v1_as_v2",
        "other_width",
        "labels",
        "v1_from_torchvision",
        "v4_as_v3",
        "v3_other_width",
        "efficientnet_width",
        "lite_from_torchvision",
        "v4_width",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, flags, message = bad_files(tmp_path)[case]
    out = tmp_path / "run"
    assert main(["import", str(path), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert not out.exists()
    assert not (tmp_path / "pwned").exists()  # the pickled command never ran


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MobileNetError, match="not an empty directory"):
        import_checkpoint(TV_V2, "torchvision", "mobilenet_v2", out, width_mult=0.35)
    assert (out / "model.json").read_text(encoding="utf-8") == "{}"


def test_unknown_source_is_refused() -> None:
    with pytest.raises(MobileNetError, match="unknown source 'keras'"):
        load_weights(create_model("mobilenet_v2", width_mult=0.35), TV_V2, "keras")
