"""Bias correction before int8: only biases change, and the simulated int8 network's outputs
keep the float network's means, so its logits come closer to float."""

from __future__ import annotations

import torch
from conftest import folded_random, raises_one_line, uniform_batches

from mobilenets.deploy.target import agreement
from mobilenets.int8.bias_correction import bias_correct
from mobilenets.int8.fake_quant import FakeQuantModel, Int8Scheme
from mobilenets.int8.layerwise import channel_means
from mobilenets.models import create_model

# per-tensor weights round coarsely enough that the shift is plain to see at 64 px
COARSE = Int8Scheme(per_channel=False)


def simulated(model: torch.nn.Module, calibration: list[torch.Tensor]) -> FakeQuantModel:
    fq = FakeQuantModel(model, COARSE)
    fq.calibrate(calibration)
    fq.set(enabled=fq.names())
    return fq


def test_only_biases_change_and_the_int8_logits_come_closer_to_float() -> None:
    model, calibration = folded_random(), uniform_batches(3, 64)
    corrected, done = bias_correct(model, calibration, COARSE)
    assert done.layers == len(FakeQuantModel(model).names()) and done.largest_shift > 0
    assert done.describe().startswith(f"bias-corrected {done.layers} layers")
    before, after = dict(model.named_parameters()), dict(corrected.named_parameters())
    assert before.keys() == after.keys()
    for name, value in before.items():
        if name.endswith("weight"):
            assert torch.equal(value, after[name]), name
    assert sum(not torch.equal(v, after[n]) for n, v in before.items() if n.endswith("bias"))
    with torch.no_grad():
        want = torch.cat([model(x) for x in calibration]).numpy()
        plain = simulated(model, calibration)
        fixed = simulated(corrected, calibration)
        was = agreement(want, torch.cat([plain(x) for x in calibration]).numpy())
        now = agreement(want, torch.cat([fixed(x) for x in calibration]).numpy())
    assert now.sqnr_db > was.sqnr_db + 1, (was, now)


def test_each_int8_output_keeps_its_float_mean() -> None:
    model, calibration = folded_random(seed=1), uniform_batches(3, 64, seed=1)
    corrected, _ = bias_correct(model, calibration, COARSE)
    name = "features.10.project.conv"  # deep enough to carry the shifts of the layers above
    with torch.no_grad():
        reference = FakeQuantModel(model, COARSE)
        reference.calibrate(calibration)
        want = channel_means(reference, calibration, [reference.model.get_submodule(name)])
        shifts = []
        for m in (model, corrected):
            fq = simulated(m, calibration)
            got = channel_means(fq, calibration, [fq.model.get_submodule(name)])
            shifts.append((got[name].mean - want[name].mean).abs().mean())
    assert shifts[1] < 0.2 * shifts[0], shifts


def test_an_unfolded_model_is_refused() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=10)
    with raises_one_line("fold BatchNorm before correcting biases"):
        bias_correct(model, uniform_batches(1, 64))
