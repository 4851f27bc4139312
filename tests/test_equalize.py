"""Equalization before int8: the rescaled network computes the same function, and the small
channels of each equalized activation are brought up to share its range."""

from __future__ import annotations

import pytest
import torch
from conftest import folded_random, raises_one_line, randomize_batchnorm

from mobilenets.deploy.heads import graph_of
from mobilenets.int8.equalize import can_equalize, equalize
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.int8.prepare import prepare_for_int8
from mobilenets.models import create_model


def batches(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 64, 64, generator=g) for _ in range(n)]


@pytest.mark.parametrize(
    ("name", "pairs", "streams"),
    [
        # the stem into block 1's depthwise, then each of blocks 2-17's expansions
        ("mobilenet_v2", 17, 7),
        # the stem and each of the 12 pointwise layers that feed the next block's depthwise
        ("mobilenet_v1", 13, 0),
    ],
)
def test_the_equalized_network_computes_the_same_function(name: str, pairs: int, streams: int):
    model = folded_random(name)
    calibration = batches()
    equalized, done = equalize(model, calibration)
    assert (done.pairs, done.streams) == (pairs, streams)
    assert done.channels > 0 and done.largest_scale > 1
    with torch.no_grad():
        for x in calibration:
            want, got = model(x), equalized(x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert not torch.equal(
        equalized.features[2].expand.conv.weight if name == "mobilenet_v2" else
        equalized.features[1].pointwise.conv.weight,
        model.features[2].expand.conv.weight if name == "mobilenet_v2" else
        model.features[1].pointwise.conv.weight,
    )  # fmt: skip


def test_small_channels_are_brought_up_to_the_clip() -> None:
    model = folded_random()
    calibration = batches()

    def expand_maxima(m: torch.nn.Module, module: str = "") -> torch.Tensor:
        out = []
        handle = (
            m.features[5]
            .expand.get_submodule(module)
            .register_forward_hook(lambda _m, _i, y: out.append(y.abs().amax(dim=(0, 2, 3))))
        )
        with torch.no_grad():
            for x in calibration:
                m(x)
        handle.remove()
        return torch.stack(out).amax(0)

    equalized = equalize(model, calibration, margin=2.0)[0]
    before, after = expand_maxima(model), expand_maxima(equalized)
    # before ReLU6 the tensor's range stays what it was (XNNPACK rounds it there too)
    assert expand_maxima(equalized, "conv").max() <= expand_maxima(model, "conv").max() * 1.0001
    lit = before > 1e-3
    # channels are only scaled up, none past the ceiling (6 / margin), and the small ones
    # come closer to the largest
    assert torch.all(after >= before - 1e-5)
    assert torch.all(after <= torch.maximum(before, torch.tensor(3.0)) + 1e-4)
    assert (after[lit] / after[lit].max()).median() > (before[lit] / before[lit].max()).median()


def test_what_cannot_be_equalized_is_refused() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=10)
    with raises_one_line("fold BatchNorm before equalizing"):
        equalize(model, batches(1))
    with raises_one_line("margin must be at least 1"):
        equalize(fold_batchnorm(model), batches(1), margin=0.5)
    with raises_one_line(r"alpha must be in \[0, 1\]"):
        equalize(fold_batchnorm(model), batches(1), alpha=2)
    with raises_one_line("no .features blocks"):
        equalize(torch.nn.Linear(3, 2), batches(1))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lraspp_mobilenet_v2", {"width_mult": 0.35}),  # taps a residual stream's sum
        ("lraspp_mobilenet_v3_large", {"width_mult": 0.35, "low_stride": 4}),
        ("ssdlite_mobilenet_v2", {"width_mult": 0.35}),  # taps a ReLU6 expansion
    ],
)
def test_a_heads_trunk_is_equalized_without_changing_what_the_head_reads(name, kwargs) -> None:
    # a head reads trunk maps that no rescaled layer divides back: those stay as they were
    torch.manual_seed(0)
    model = fold_batchnorm(randomize_batchnorm(create_model(name, num_classes=5, **kwargs), 0))
    calibration = [torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))]
    equalized, done = equalize(model.eval(), calibration)
    assert done.channels > 0
    with torch.no_grad():  # what a program holds: a detector's logits and offsets as one tensor
        want, got = graph_of(model)(calibration[0]), graph_of(equalized)(calibration[0])
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_none_equalizes_wherever_the_network_allows() -> None:
    """What a format that equalizes by default asks (``Target.equalize``)."""
    model, calibration = folded_random(), batches(1)
    assert prepare_for_int8(model, calibration, None)[1].equalization.startswith("equalized ")
    assert prepare_for_int8(model, calibration)[1].equalization is None
    # a network it cannot take is left as it is with None, and refused when asked
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert not can_equalize(other) and not can_equalize(create_model("mobilenet_v2"))
    kept, done = prepare_for_int8(other, calibration, None)
    assert kept is other and done.equalization is None
    with raises_one_line("no .features blocks"):
        prepare_for_int8(other, calibration, equalize=True)
