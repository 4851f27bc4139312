"""The least-squares refit before int8: each layer, refitted to its simulated int8 input,
reproduces its float output better, and the simulated int8 network comes closer to float."""

from __future__ import annotations

import pytest
import torch
from conftest import folded_random, int8_logits, raises_one_line, uniform_batches

from mobilenets.deploy.refit import Refit, _grouped, _Normal, _patches, refit
from mobilenets.deploy.target import agreement
from mobilenets.models import create_model


@pytest.fixture(scope="module")
def refitted() -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor], Refit]:
    model, calibration = folded_random(), uniform_batches(2, 48)
    out, done = refit(model, calibration)
    return model, out, calibration, done


def test_the_normal_equations_give_the_fit_error() -> None:
    """The error read from ``X'X``, ``X'Y`` and ``Y'Y`` is the error of the convolution."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3)
    x = torch.randn(2, 6, 9, 9, generator=g)
    other = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3)
    with torch.no_grad():
        want = float((other(x) - conv(x)).double().square().sum())
        rows = _patches(conv, x).transpose(0, 1)
        y = rows @ _grouped(conv.weight, conv.bias, 3)
        normal = _Normal(rows.transpose(1, 2) @ rows, rows.transpose(1, 2) @ y, y.square().sum(1))
        got = normal.error(_grouped(other.weight, other.bias, 3))
    assert got == pytest.approx(want, rel=1e-9)


def test_each_layer_reproduces_its_float_output_better(refitted) -> None:
    model, out, _, done = refitted
    layers = [m for m in out.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert done.layers + done.kept == len(layers)
    assert done.layers > 0 and done.error_after < done.error_before
    assert done.describe().startswith(f"refitted {done.layers} layers")
    # only weights and biases change: the same modules, the same shapes
    assert [n for n, _ in out.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_the_int8_network_comes_closer_to_float(refitted) -> None:
    model, out, calibration, _ = refitted
    with torch.no_grad():
        want = torch.cat([model(x) for x in calibration]).numpy()
    was = agreement(want, int8_logits(model, calibration).numpy())
    now = agreement(want, int8_logits(out, calibration).numpy())
    assert now.sqnr_db > was.sqnr_db + 0.5, (was, now)


def test_bad_requests_are_refused() -> None:
    with raises_one_line("fold BatchNorm before refitting"):
        refit(create_model("mobilenet_v2", width_mult=0.35, num_classes=10), uniform_batches(1, 48))
    with raises_one_line("the refit needs a positive ridge, got 0"):
        refit(folded_random(), uniform_batches(1, 48), ridge=0)
