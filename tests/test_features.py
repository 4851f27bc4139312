"""Backbone features: maps at strides 2..32 with their channels, as dense heads expect."""

from __future__ import annotations

import pytest
import torch

from mobilenets import MobileNetError, create_model
from mobilenets.models.features import FeatureExtractor


@pytest.mark.parametrize(
    ("name", "channels"),
    [("mobilenet_v1", (64, 128, 256, 512, 1024)), ("mobilenet_v2", (16, 24, 32, 96, 1280))],
)
def test_maps_at_strides_2_to_32_with_their_channels(name: str, channels: tuple[int, ...]) -> None:
    model = create_model(name, features_only=True).eval()
    assert [f.channels for f in model.feature_info] == list(channels)
    assert [f.reduction for f in model.feature_info] == [2, 4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // r, 64 // r) for c, r in zip(channels, (2, 4, 8, 16, 32), strict=True)
    ]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_last_map_is_forward_features(name: str) -> None:
    model = create_model(name, width_mult=0.35, num_classes=10).eval()
    backbone = FeatureExtractor(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x)[-1], model.forward_features(x))
        pooled = model.classifier(model.forward_features(x))
        assert torch.equal(pooled, model(x))


def test_out_indices_select_levels_and_drop_deeper_layers() -> None:
    model = create_model("mobilenet_v2", features_only=True, out_indices=(1, 3), width_mult=0.5)
    assert [(f.module, f.channels, f.reduction) for f in model.feature_info] == [
        ("features.3", 16, 4),
        ("features.13", 48, 16),
    ]
    assert len(model.features) == 14  # nothing after features.13, and no classifier
    assert not any(k.startswith("classifier") for k in model.state_dict())
    maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 16), (48, 4, 4)]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_small_input_reports_the_reductions_it_has(name: str) -> None:
    model = create_model(name, features_only=True, small_input=True, width_mult=0.25)
    assert [f.reduction for f in model.feature_info] == [1, 2, 4, 8]
    maps = model(torch.randn(1, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4]


def test_classification_weights_load_into_the_backbone() -> None:
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=10).eval()
    backbone = create_model("mobilenet_v1", width_mult=0.25, features_only=True, out_indices=(2,))
    trunk = {k: v for k, v in model.state_dict().items() if k in backbone.state_dict()}
    backbone.load_state_dict(trunk)  # strict: the trunk's names are kept
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x)[0], model.features[:6](x))


def test_gradients_reach_the_stem() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35, features_only=True)
    sum(m.mean() for m in model(torch.randn(2, 3, 64, 64))).backward()
    assert model.features[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features_only": True, "out_indices": (5,)}, "out_index 5 does not exist"),
        ({"features_only": True, "out_indices": ()}, "out_indices is empty"),
        ({"features_only": True, "out_indices": (3, 1)}, "increasing"),
        ({"features_only": True, "out_indices": (1, 1)}, "increasing"),
        ({"features_only": True, "out_indices": ("2",)}, "out_index '2'"),
        ({"out_indices": (1, 2)}, "only used with features_only"),
        ({"features_only": True, "small_input": True, "out_indices": (4,)}, "3 (stride 8)"),
    ],
)
def test_bad_out_indices_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(MobileNetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model("mobilenet_v2", width_mult=0.25, **kwargs)
