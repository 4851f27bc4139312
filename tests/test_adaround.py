"""AdaRound before int8: the weights land on the int8 grid every runtime recomputes, only
the weights change, and the simulated int8 network comes closer to float."""

from __future__ import annotations

import pytest
import torch
from conftest import folded_random, int8_logits, raises_one_line, uniform_batches

from mobilenets.deploy.target import agreement
from mobilenets.int8.adaround import adaround
from mobilenets.int8.fake_quant import fake_quant_weight
from mobilenets.models import create_model

SLOW_FIXTURES = {"rounded"}  # they train, import or time: conftest marks their tests slow


@pytest.fixture(scope="module")
def rounded() -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor], object]:
    model, calibration = folded_random(), uniform_batches(2, 48)
    out, done = adaround(model, calibration, iterations=40)
    return model, out, calibration, done


def test_weights_land_on_the_grid_the_runtimes_recompute(rounded) -> None:
    model, out, _, done = rounded
    layers = {
        n: m for n, m in out.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    }
    assert done.layers + done.kept_nearest == len(layers)
    assert done.describe().startswith("adaptively rounded ")
    flipped = 0
    for name, layer in layers.items():
        w, w0 = layer.weight.detach(), model.get_submodule(name).weight.detach()
        # a per-channel symmetric quantizer, recomputing the step, gets these weights back
        assert torch.allclose(fake_quant_weight(w, True), w, rtol=0, atol=1e-7), name
        # each channel keeps its largest weight, so its step is the original one
        dims = tuple(range(1, w.ndim))
        assert torch.allclose(w.abs().amax(dims), w0.abs().amax(dims), rtol=1e-6), name
        # every weight moved to one of its two neighbouring levels
        step = w0.abs().amax(dims, keepdim=True) / 127
        assert ((w - w0).abs() <= step * (1 + 1e-4)).all(), name
        flipped += int((w != fake_quant_weight(w0, True)).sum())
        assert torch.equal(layer.bias, model.get_submodule(name).bias), name
    assert flipped == done.flipped > 0


def test_the_int8_network_comes_closer_to_float(rounded) -> None:
    model, out, calibration, done = rounded
    assert done.error_learned < done.error_nearest
    with torch.no_grad():
        want = torch.cat([model(x) for x in calibration]).numpy()
    was = agreement(want, int8_logits(model, calibration).numpy())
    now = agreement(want, int8_logits(out, calibration).numpy())
    assert now.sqnr_db > was.sqnr_db + 0.5, (was, now)


def test_bad_requests_are_refused() -> None:
    with raises_one_line("fold BatchNorm before rounding adaptively"):
        adaround(
            create_model("mobilenet_v2", width_mult=0.35, num_classes=10), uniform_batches(1, 48)
        )
    with raises_one_line("AdaRound needs a positive number of steps, got 0"):
        adaround(folded_random(), uniform_batches(1, 48), iterations=0)
