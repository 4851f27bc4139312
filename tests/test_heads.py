"""Dense heads on MobileNet trunks (issue 33): SSDLite, LR-ASPP, DeepLabV3.

The counts are torchvision 0.29.1's (weights=None; mult-adds by this project's convention,
convolutions and FC only), counted on the meta device so they take a moment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import randomize_batchnorm
from safetensors.torch import save_file
from torch import nn

from mobilenets import MobileNetError, create_model
from mobilenets.analysis.cost import profile_model
from mobilenets.interop.names import tensor_names
from mobilenets.interop.weights import load_weights, to_torchvision_state_dict
from mobilenets.latency.model import LATENCY_KINDS, Calibration, Roofline, predict_latency
from mobilenets.models import (
    LRASPP,
    V3_LARGE_TABLE,
    DeepLabV3,
    MobileNetV3,
    SSDLite,
    default_boxes,
    list_models,
    model_task,
)
from mobilenets.models.dense import halve_last_stage, set_output_stride

COUNTS = [
    ("ssdlite_mobilenet_v3_large", {}, 320, 3_440_060, 583_171_904),
    ("lraspp_mobilenet_v3_large", {}, 520, 3_221_538, 2_086_219_688),
    ("deeplabv3_mobilenet_v3_large", {}, 520, 11_025_477, 10_436_350_688),
    ("deeplabv3_mobilenet_v3_large", {"aux": True}, 520, 11_029_328, 10_436_350_688),
]


def _meta(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize(("name", "kwargs", "resolution", "params", "macs"), COUNTS)
def test_counts_equal_torchvisions(
    name: str, kwargs: dict, resolution: int, params: int, macs: int
) -> None:
    report = profile_model(_meta(name, **kwargs), resolution)
    assert report.total_params == params
    assert report.total_macs == macs  # the auxiliary head is not in the inference pass


def test_separable_aspp_is_the_cheap_deeplab() -> None:
    """DeepLabV3+'s atrous separable convolutions in the ASPP and the 3x3 after it: the head
    falls from 8.05M parameters to 1.67M (our count; torchvision has no such variant)."""
    report = profile_model(_meta("deeplabv3_mobilenet_v3_large", separable=True), 520)
    assert (report.total_params, report.total_macs) == (4_637_445, 3_472_953_632)


def test_ssdlite_reads_c4_expansion_and_the_reduced_tail() -> None:
    model = _meta("ssdlite_mobilenet_v3_large")
    c4, c5 = model.taps
    assert (c4.layer, c4.channels, c4.reduction, c4.expansion) == ("13", 672, 16, True)
    assert (c5.layer, c5.channels, c5.reduction, c5.expansion) == ("16", 480, 32, False)
    assert [b.out_channels for b in model.features[13:16]] == [80, 80, 80]  # 160 halved
    assert [b.hidden_channels for b in model.features[13:16]] == [672, 480, 480]
    assert [block.out_channels for block in model.extra] == [512, 256, 256, 128]
    assert all(head.values == 91 for head in model.classification_head)
    assert all(
        m.eps == 1e-3 and m.momentum == 0.03
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    v2 = _meta("ssdlite_mobilenet_v2")
    assert [(t.layer, t.channels, t.expansion) for t in v2.taps] == [
        ("14", 576, True),  # the V2 paper's "expansion of layer 15"
        ("18", 1280, False),
    ]


def test_halve_last_stage_is_torchvisions_reduced_tail() -> None:
    rows = halve_last_stage(V3_LARGE_TABLE)
    assert rows[:13] == V3_LARGE_TABLE[:13]
    assert [(r.exp, r.c) for r in rows[13:]] == [(672, 80), (480, 80), (480, 80), (0, 480)]


def test_ssdlite_outputs_one_prediction_per_default_box() -> None:
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v3_large", width_mult=0.5, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 128))
    sizes = model.feature_sizes((96, 128))
    assert sizes == [(6, 8), (3, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    anchors = sum(h * w for h, w in sizes) * 6
    assert out.cls_logits.shape == (2, anchors, 5)
    assert out.bbox_regression.shape == (2, anchors, 4)
    assert model.default_boxes((96, 128)).shape == (anchors, 4)


def test_ssdlite_trunk_maps_are_the_classifiers() -> None:
    """The expansion tap splits block 13 in two; the stride-32 map is still the trunk's."""
    torch.manual_seed(0)
    backbone = MobileNetV3(halve_last_stage(V3_LARGE_TABLE), 1280, width_mult=0.5).eval()
    model = SSDLite(backbone, 3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c4, c5 = model.forward_taps(x)
        torch.testing.assert_close(c5, backbone.features(x))
        torch.testing.assert_close(c4, backbone.features[13].expand(backbone.features[:13](x)))


def test_default_boxes_are_ssds() -> None:
    """At 320x320 torchvision's SSDLite has 3,234 boxes; the first sits in the first cell
    with scale 0.2, then sqrt(0.2 * 0.35), then the aspect-ratio pairs."""
    model = _meta("ssdlite_mobilenet_v3_large")
    sizes = model.feature_sizes(320)
    assert sizes == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    boxes = default_boxes(sizes)
    assert boxes.shape == (3234, 4)
    first = boxes[:6]
    torch.testing.assert_close(first[:, :2], torch.full((6, 2), 0.025))
    s, r2 = 0.2, math.sqrt(2)
    expected_wh = [(s, s), (math.sqrt(s * 0.35),) * 2, (s * r2, s / r2), (s / r2, s * r2)]
    torch.testing.assert_close(first[:4, 2:], torch.tensor(expected_wh))
    assert boxes[-6].tolist() == pytest.approx([0.5, 0.5, 0.95, 0.95])  # last map, square
    assert boxes[-1].tolist() == pytest.approx([0.5, 0.5, 0.95 / math.sqrt(3), 1.0])  # clipped
    assert boxes[:, 2:].max() <= 1  # clipped
    corners = model.default_boxes(320)
    torch.testing.assert_close(corners[0], torch.tensor([-24.0, -24.0, 40.0, 40.0]))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lraspp_mobilenet_v3_large", {"width_mult": 0.5}),
        ("deeplabv3_mobilenet_v2", {"width_mult": 0.35, "separable": True}),
    ],
)
def test_segmentation_logits_have_the_input_size(name: str, kwargs: dict) -> None:
    model = create_model(name, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 65, 97)).shape == (2, 5, 65, 97)


def test_lraspp_reads_its_detail_map_at_stride_4_when_asked() -> None:
    """``low_stride=4``: the detail classifier reads the block that steps down to stride 4
    (V3-Large's features.2, 24 channels) and the logits still have the input's size; the
    stride-16 branch is scored before it is upsampled, which computes the same logits; the
    paper's stride 8 stays the default, so torchvision's counts hold."""
    paper = create_model("lraspp_mobilenet_v3_large", num_classes=5)
    fine = create_model("lraspp_mobilenet_v3_large", num_classes=5, low_stride=4)
    assert paper.classifier.low_classifier.in_channels == 40  # features.4, stride 8
    assert fine.classifier.low_classifier.in_channels == 24
    assert (
        sum(p.numel() for p in fine.parameters())
        == sum(p.numel() for p in paper.parameters()) - (40 - 24) * 5
    )
    randomize_batchnorm(fine).eval()  # trained-like statistics: logits that differ
    images = torch.randn(1, 3, 64, 96)
    assert fine.classifier.score_first and not paper.classifier.score_first
    with torch.no_grad():
        scored_first = fine(images)
        fine.classifier.score_first = False  # torchvision's order: the same function
        assert scored_first.shape == (1, 5, 64, 96)
        torch.testing.assert_close(fine(images), scored_first, atol=1e-5, rtol=1e-5)
    with pytest.raises(MobileNetError, match="stride 8 or 4; got low_stride=2"):
        create_model("lraspp_mobilenet_v2", low_stride=2)


def test_deeplab_auxiliary_head_is_a_training_output() -> None:
    model = create_model("deeplabv3_mobilenet_v3_large", width_mult=0.5, num_classes=4, aux=True)
    out, aux = model.eval().forward_aux(torch.randn(1, 3, 64, 64))
    assert out.shape == aux.shape == (1, 4, 64, 64)
    assert model.aux_classifier.conv.conv.in_channels == 24  # features.4, stride 8
    with pytest.raises(MobileNetError, match="without aux=True"):
        create_model("deeplabv3_mobilenet_v2", width_mult=0.35).forward_aux(
            torch.randn(1, 3, 32, 32)
        )


def test_output_stride_16_dilates_the_last_stage_as_torchvision() -> None:
    model = _meta("lraspp_mobilenet_v3_large")
    assert model.stride == 16
    assert [(t.layer, t.channels, t.reduction) for t in model.taps] == [
        ("4", 40, 8),  # the block that steps to stride 8 (torchvision's C2)
        ("16", 960, 16),
    ]
    depthwise = [model.features[i].depthwise.conv for i in (12, 13, 14, 15)]
    assert [(d.stride, d.dilation, d.padding) for d in depthwise] == [
        ((1, 1), (1, 1), (1, 1)),
        ((1, 1), (2, 2), (4, 4)),
        ((1, 1), (2, 2), (4, 4)),
        ((1, 1), (2, 2), (4, 4)),
    ]
    assert not model.features[13].use_residual  # built with stride 2, as torchvision's


def test_classifier_weights_load_into_the_dilated_trunk() -> None:
    classifier = create_model("mobilenet_v3_large", width_mult=0.5)
    model = create_model("lraspp_mobilenet_v3_large", width_mult=0.5)
    trunk = {k: v for k, v in classifier.state_dict().items() if k.startswith("features.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing)


def test_registered_dense_models_are_listed_by_task() -> None:
    assert "ssdlite_mobilenet_v3_large" not in list_models()  # classifiers only
    assert {"ssdlite_mobilenet_v3_large", "ssdlite_mobilenet_v2"} <= set(list_models("detection"))
    assert {"lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"} <= set(
        list_models("segmentation")
    )
    assert model_task("deeplabv3_mobilenet_v2") == "segmentation"
    assert model_task("mobilenet_v2") == "classification"
    assert set(list_models(None)) >= set(list_models()) | set(list_models("detection"))


@pytest.mark.parametrize("name", sorted(list_models("detection") + list_models("segmentation")))
def test_every_dense_model_is_counted_and_priced(name: str) -> None:
    report = profile_model(_meta(name), 320)
    assert report.total_macs > 0 and report.total_params > 0
    calibration = Calibration(
        runtime="test",
        runtime_version="0",
        provider="cpu",
        threads=1,
        machine="test",
        rooflines={kind: Roofline(1e10, 1e10, 1e-6) for kind in LATENCY_KINDS},
        node_overhead_s=0.0,
        run_overhead_s=0.0,
    )
    prediction = predict_latency(report, calibration)
    convs = [row.name for row in report.layers if row.op.endswith("Conv") or row.op == "Conv2d"]
    assert set(convs) <= set(prediction.by_name())
    assert prediction.ms > 0


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (SSDLite, "SSDLite needs backbone feature maps at strides 16 and 32"),
        (LRASPP, "LR-ASPP needs backbone feature maps at strides 8 and 16 or more"),
        (DeepLabV3, "DeepLabV3 needs backbone feature maps at strides 8 and 16 or more"),
    ],
)
def test_a_head_on_a_backbone_without_its_levels_is_one_line(head: type, message: str) -> None:
    with torch.device("meta"):
        backbone = create_model("mobilenet_v2", small_input=True)  # strides 1, 2, 4, 8
    with pytest.raises(MobileNetError, match=message) as error:
        head(backbone)
    assert "has maps at strides 1, 2, 4, 8" in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_head_arguments_are_one_line() -> None:
    with pytest.raises(MobileNetError, match="counts the background"):
        create_model("ssdlite_mobilenet_v3_large", num_classes=1)
    with pytest.raises(MobileNetError, match="num_classes"):
        create_model("lraspp_mobilenet_v3_large", num_classes=0)
    with pytest.raises(MobileNetError, match="output_stride must be 8, 16 or 32"):
        set_output_stride(_meta("mobilenet_v2"), 4)
    with pytest.raises(MobileNetError, match="does not declare its stride"):
        set_output_stride(_meta("vgg_small"), 8)


def test_export_captures_the_heads_as_convolutions() -> None:
    model = create_model("lraspp_mobilenet_v3_small", width_mult=0.5, num_classes=3).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("conv2d" in t for t in targets) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules()
    )


@pytest.mark.slow
def test_cost_and_models_commands_count_the_heads(capsys: pytest.CaptureFixture[str]) -> None:
    from mobilenets.cli import main

    assert main(["cost", "lraspp_mobilenet_v3_large", "--resolution", "520", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # the model's own 21 classes, not 1000
    assert (data["total_params"], data["total_macs"]) == (3_221_538, 2_086_219_688)
    assert main(["models", "--task", "detection", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == set(list_models("detection"))
    assert rows["ssdlite_mobilenet_v3_large"]["classes"] == 91


# Made by torchvision 0.29.1 itself (torch 2.14.1; weights=None, weights_backbone=None;
# DeepLabV3 with aux_loss=True): every tensor name and shape of its three models.
TORCHVISION_SHAPES = Path(__file__).parent / "fixtures/interop/torchvision_dense_shapes.json"


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        ("ssdlite_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large", {}),
        ("lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large", {}),
        ("deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", {"aux": True}),
    ],
)
def test_torchvision_names_cover_its_state_dict(ours: str, theirs: str, kwargs: dict) -> None:
    """Every tensor maps one to one onto torchvision's, shapes equal. (Checked once beside
    torchvision too: its randomly initialised weights, imported, give bit-equal outputs and
    default boxes on a 320x320 input.)"""
    wanted = json.loads(TORCHVISION_SHAPES.read_text())["shapes"][theirs]
    model = _meta(ours, **kwargs)
    names = tensor_names(model, "torchvision")
    assert sorted(names.values()) == sorted(wanted)
    state = model.state_dict()
    assert all(list(state[k].shape) == wanted[v] for k, v in names.items())


def test_torchvision_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", width_mult=0.5, num_classes=3).eval()
    path = tmp_path / "lraspp.safetensors"
    save_file(to_torchvision_state_dict(model), str(path))
    again = load_weights(
        create_model("lraspp_mobilenet_v3_large", width_mult=0.5, num_classes=3),
        path,
        "torchvision",
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    with pytest.raises(MobileNetError, match="heads sit on MobileNetV3"):
        tensor_names(_meta("lraspp_mobilenet_v2"), "torchvision")
