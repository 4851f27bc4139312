"""The latency model: layer kinds, the roofline and its fit, calibration in onnxruntime, the
cache and its staleness, and the predicted columns of ``cost`` and ``speedup``."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import built_once
from torch import nn

from mobilenets.analysis.cost import LayerCost, profile_model
from mobilenets.cli import main
from mobilenets.deploy.runtime import create_session
from mobilenets.errors import MobileNetError
from mobilenets.latency import calibration as calib
from mobilenets.latency import graphs, machine, profiling
from mobilenets.latency import samples as sampling
from mobilenets.latency.model import (
    LATENCY_KINDS,
    MEMORY_ONLY_KINDS,
    WARM_KIND,
    Calibration,
    Roofline,
    bytes_moved,
    cached_bytes,
    depthwise_kind,
    latency_kinds,
    macs_done,
    padded_channels,
    pointwise_kind,
    predict_latency,
)
from mobilenets.latency.speedup import ConvShape, measure_separable_speedup, predicted_speedup
from mobilenets.models import create_model

SLOW_FIXTURES = {"calibration"}  # they train, import or time: conftest marks their tests slow

# A real calibration, kept small: one family at one width and resolution, 3 layers a kind.
SMALL = dict(models=["mobilenet_v2"], widths=(0.35,), resolutions=(96,), per_kind=3, budget_s=0.005)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    """One small calibration for the session, whichever test process asks first (each
    xdist worker made its own before: half a minute each)."""

    def build(directory: Path) -> None:
        (directory / "calibration.json").write_text(json.dumps(calib.calibrate(**SMALL).to_json()))

    return machine.read_calibration(
        built_once(tmp_path_factory, "calibration", build) / "calibration.json"
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(machine.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


class SqueezeExcite(nn.Module):
    """The gate of MobileNetV3: pool, reduce, expand, scale the feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(channels // 4, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def se_network() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 32, 3, 2, 1),
            dw=nn.Conv2d(32, 32, 3, 1, 1, groups=32),
            se=SqueezeExcite(32),
            project=nn.Conv2d(32, 300, 1),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            fc=nn.Linear(300, 10),
        )
    )


# --------------------------------------------------------------------------- kinds, roofline


def test_layer_kinds_of_mobilenet_v2() -> None:
    report = profile_model(create_model("mobilenet_v2"), 224)
    kinds = dict(zip((r.name for r in report.layers), latency_kinds(report.layers), strict=True))
    assert kinds["features.0.conv"] == "standard K<64"  # 3 channels x 3 x 3
    assert kinds["features.2.depthwise.conv"] == "depthwise 3x3"
    assert [depthwise_kind(taps) for taps in (9, 25, 49)] == ["depthwise 3x3"] + 2 * [
        "depthwise 5x5+"
    ]
    assert kinds["features.2.expand.conv"] == "pointwise K<64"  # 16 channels in
    assert kinds["features.14.expand.conv"] == "pointwise K<256"  # 96
    assert kinds["features.18.conv"] == "pointwise K>=256"  # 320
    assert kinds["classifier.fc"] == "fc"
    assert kinds["classifier.pool"] == "global pool"
    relu6 = [r.name for r in report.layers if r.op == "ReLU6"]
    assert relu6 and all(kinds[name] == "relu6" for name in relu6)  # its extra pass is priced
    fused = [r.name for r in report.layers if r.kind == "batchnorm"]
    assert fused and all(kinds[name] is None for name in fused)


def test_hardswish_is_a_fused_pass_priced_like_relu6(calibration: Calibration) -> None:
    # MobileNetV3's HardSwish runs inside its convolution, but makes a pass over its output
    report = profile_model(create_model("mobilenet_v3_small", width_mult=0.35), 96)
    kinds = latency_kinds(report.layers)
    hardswish = [k for row, k in zip(report.layers, kinds, strict=True) if row.op == "Hardswish"]
    assert len(hardswish) == 19 and set(hardswish) == {"hardswish"}
    prediction = predict_latency(report, calibration)
    passes = [layer for layer in prediction.layers if layer.kind == "hardswish"]
    assert len(passes) == 19 and all(layer.seconds >= 0 for layer in passes)
    assert prediction.nodes == len(prediction.layers) - 19  # no kernel of their own
    assert calibration.kind_nodes["hardswish"] == 0  # measured: no node added in place
    graph = graphs.context_graph(
        next(s for s in sampling.synthetic_samples() if s.kind == "hardswish")
    )
    assert [n.op_type for n in graph.graph.node if n.name == "layer"] == ["HardSwish"]


def test_squeeze_excitation_is_told_from_the_classifier_pool() -> None:
    report = profile_model(se_network(), 64, in_chans=3)
    kinds = dict(zip((r.name for r in report.layers), latency_kinds(report.layers), strict=True))
    assert kinds["se.pool"] == "se"
    assert kinds["se.reduce"] == kinds["se.expand"] == "fc"  # matrix-vector on a 1x1 map
    assert kinds["pool"] == "global pool"
    assert kinds["project"] == "pointwise K<64"


def test_gates_of_the_registered_v3_are_priced_as_se_and_fc() -> None:
    report = profile_model(create_model("mobilenet_v3_small"), 224)
    kinds = dict(zip((r.name for r in report.layers), latency_kinds(report.layers), strict=True))
    assert kinds["features.1.se.pool"] == "se"
    assert kinds["features.1.se.reduce"] == kinds["features.1.se.expand"] == "fc"
    assert kinds["features.1.se.gate"] is None
    assert kinds["classifier.pool"] == "global pool"


def test_pointwise_kind_edges() -> None:
    assert [pointwise_kind(k) for k in (63, 64, 255, 256)] == [
        "pointwise K<64",
        "pointwise K<256",
        "pointwise K<256",
        "pointwise K>=256",
    ]


def test_blocked_layouts_price_padded_channels() -> None:
    """In 16-channel blocks a 24 -> 24 pointwise layer computes and moves 32 channels; a
    16-channel one and an RGB stem's input are not padded; fully connected layers never are."""
    row = LayerCost("pw", "pointwise", (1, 24, 8, 8), (1, 24, 8, 8), 24 * 24 * 64, 24 * 24, 0)
    assert macs_done(row, "pointwise K<64", block=16) == pytest.approx(row.macs * (32 / 24) ** 2)
    assert macs_done(row, "pointwise K<64", block=1) == row.macs
    assert bytes_moved(row, "pointwise K<64", block=16) == 4 * (2 * 32 * 64 + 32 * 32)
    dw = LayerCost("dw", "depthwise", (1, 24, 8, 8), (1, 24, 8, 8), 9 * 24 * 64, 9 * 24, 0)
    assert macs_done(dw, "depthwise 3x3", block=16) == pytest.approx(dw.macs * 32 / 24)
    stem = LayerCost("stem", "standard", (1, 3, 8, 8), (1, 16, 8, 8), 27 * 16 * 64, 27 * 16, 0)
    assert macs_done(stem, "standard K<64", block=16) == stem.macs
    assert [padded_channels(c, 16) for c in (3, 8, 16, 17, 24)] == [3, 16, 16, 32, 32]
    fc = LayerCost("fc", "linear", (1, 24), (1, 10), 240, 250, 0)
    assert macs_done(fc, "fc", block=16) == fc.macs


def test_roofline_takes_the_slower_roof_plus_overhead() -> None:
    roof = Roofline(macs_per_s=1e10, bytes_per_s=1e9, overhead_s=1e-6)
    assert roof.seconds(10**6, 10**4) == pytest.approx(1e-4 + 1e-6)  # compute: 100 us > 10 us
    assert roof.bound(10**7, 10**5) == "compute"
    assert roof.bound(10**5, 10**6) == "memory"
    assert Roofline.from_json(roof.to_json()) == roof
    flat = Roofline(math.inf, 1e9, 0.0)
    assert flat.to_json()["macs_per_s"] is None and Roofline.from_json(flat.to_json()) == flat


def test_fit_recovers_a_known_roofline() -> None:
    truth = Roofline(macs_per_s=5e10, bytes_per_s=2e10, overhead_s=3e-6)
    report = profile_model(create_model("mobilenet_v1", width_mult=0.5), 160)
    rows = [(r, k) for r, k in zip(report.layers, latency_kinds(report.layers), strict=True) if k]
    samples = [sampling.Sample(r, "depthwise 3x3") for r, k in rows if r.macs]
    samples = [replace(s, seconds=truth.seconds(s.macs, s.bytes)) for s in samples]
    fitted = calib.fit_roofline(samples)
    assert max(calib.relative_errors(fitted, samples)) < 0.01
    assert fitted.macs_per_s == pytest.approx(truth.macs_per_s, rel=0.05)
    assert fitted.bytes_per_s == pytest.approx(truth.bytes_per_s, rel=0.05)


def test_a_ReLU6_too_small_to_see_is_priced_free_and_any_other_kind_refused() -> None:
    # a small calibration's ReLU6 passes can all add less than the timer resolves
    truth = Roofline(macs_per_s=5e10, bytes_per_s=2e10, overhead_s=3e-6)
    convs = [s for s in sampling.synthetic_samples() if s.kind == "standard K>=64"][:3]
    samples = [
        replace(s, kind=kind, seconds=truth.seconds(s.macs, s.bytes))
        for kind in LATENCY_KINDS
        if kind != "relu6"
        for s in convs
    ]
    unseen = [replace(s, kind="relu6", seconds=-1e-7, nodes=0) for s in convs]
    calibration = calib.fit_calibration(samples + unseen, 0.0, 0.0)
    free = calibration.rooflines["relu6"]
    assert free.seconds(10**6, 10**6) == 0.0 and free.bound(0, 10**6) == "memory"
    assert calibration.fit["relu6"]["samples"] == 3 and calibration.kind_nodes["relu6"] == 0
    assert calibration.fit["relu6"]["median_error"] is None
    assert free.to_json()["bytes_per_s"] is None  # plain JSON: no Infinity in the cache
    assert Calibration.from_json(json.loads(json.dumps(calibration.to_json()))) == calibration
    with pytest.raises(MobileNetError, match="no fc layers were measured"):
        calib.fit_calibration([s for s in samples if s.kind != "fc"] + unseen, 0.0, 0.0)


def test_a_fused_pass_is_fitted_without_a_call_cost_and_an_se_gate_pays_its_nodes(
    calibration: Calibration,
) -> None:
    # ReLU6's clamp runs inside its convolution: seconds = bytes / rate, noise either side of 0
    maps = [s for s in sampling.synthetic_samples() if s.kind == "relu6"]
    noise = np.resize([0.4e-6, -0.4e-6], len(maps))
    timed = [replace(s, seconds=s.bytes / 5e10 + e) for s, e in zip(maps, noise, strict=True)]
    pass_rate = calib.fit_fused_pass(timed)
    assert pass_rate.overhead_s == 0.0 and pass_rate.bytes_per_s == pytest.approx(5e10, rel=0.05)
    # a pass after a long convolution scatters more than it adds: it must not set the rate
    lost = replace(maps[-1], row=replace(maps[-1].row, output_shape=(1, 144, 112, 112)))
    lost = replace(lost, seconds=-300e-6, scatter_s=200e-6)
    steady = [replace(s, scatter_s=1e-6) for s in timed]
    assert calib.fit_fused_pass([*steady, lost]).bytes_per_s == pytest.approx(5e10, rel=0.1)
    assert profiling.standard_error([1.0, 1.0, 5.0, 1.0]) == 0.0  # an outlier does not widen it
    # an SE gate runs its pooling, its scale and two layout conversions: 4 nodes, 4 overheads
    report = profile_model(se_network(), 64, in_chans=3)
    gated = replace(calibration, kind_nodes={**calibration.kind_nodes, "se": 4})
    prediction = predict_latency(report, gated)
    assert prediction.runtime_nodes == prediction.nodes + 3
    assert prediction.seconds - predict_latency(report, replace(gated, kind_nodes={})).seconds == (
        pytest.approx(3 * calibration.node_overhead_s)
    )
    assert calibration.kind_nodes["se"] >= 2  # measured: at least its pooling and its scale


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("kind", LATENCY_KINDS)
def test_one_layer_graphs_compute_the_traced_shapes(kind: str, tmp_path: Path) -> None:
    # max pools from VGG, 5x5 depthwise and SiLU from EfficientNet
    samples = sampling.registry_samples(
        ["mobilenet_v2", "vgg_small", "efficientnet_b0"], (0.5,), (96,)
    )
    traced_kind = "fc" if kind == WARM_KIND else kind  # the same layers, timed warm
    sample = replace(next(s for s in samples if s.kind == traced_kind), kind=kind)
    model = graphs.layer_graph(sample)
    onnx.checker.check_model(model)
    path = tmp_path / "layer.onnx"
    onnx.save(model, str(path))
    x = np.zeros(sample.row.input_shape, dtype=np.float32)
    (y, *copies) = create_session(path).run(None, {"x": x})
    assert tuple(y.shape) == (sample.row.input_shape if kind == "se" else sample.row.output_shape)
    assert len(copies) == graphs.cold_copies(sample) - 1  # fc: its copies, each with its output
    if kind == "fc":
        assert copies  # a classifier's weights fit in cache: copies make them come from memory
    if kind == WARM_KIND:
        assert not copies  # alone, run after run: its weights stay in cache


def test_samples_are_timed_kind_after_kind_in_turn() -> None:
    # a slow spell must not fall on every sample of one kind
    kinds = ["se", "se", "se", "fc", "fc", "silu"]
    samples = [
        replace(s, kind=k) for s, k in zip(sampling.synthetic_samples(), kinds, strict=False)
    ]
    order = profiling.interleaved(samples)
    assert [samples[i].kind for i in order] == ["se", "fc", "silu", "se", "fc", "se"]
    assert sorted(order) == list(range(6)) and profiling.interleaved([]) == []
    # a second pass begins each kind half way along, so the largest are timed elsewhere
    assert profiling.interleaved(samples, 0.5) == [1, 4, 5, 2, 3, 0]


def test_each_layer_keeps_its_fastest_round(monkeypatch: pytest.MonkeyPatch) -> None:
    # a slow spell in one pass over the samples must not set a layer's time
    convs = [s for s in sampling.synthetic_samples() if s.kind == "standard K>=64"][:2]
    times = iter(
        [5e-6, 2e-6, 3e-6, 4e-6]
    )  # pass 1: first, second; pass 2 (begun half way): second, first

    def profile(*args: object, **kwargs: object) -> profiling.Profile:
        seconds = next(times)
        return profiling.Profile(math.nan, [("layer", "Conv", seconds)], (seconds,))

    monkeypatch.setattr(profiling, "profile_onnx", profile)
    measured, passes = profiling.measure_samples(convs, rounds=2, max_rounds=2)
    assert passes == 2
    assert [s.seconds for s in measured] == [4e-6, 2e-6]
    assert [s.row for s in measured] == [s.row for s in convs]


def test_passes_go_on_while_the_last_one_sped_layers_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # a slow spell can outlast two passes: a third is made when the second sped layers up
    convs = [s for s in sampling.synthetic_samples() if s.kind == "standard K>=64"][:2]
    times = iter([5e-6, 5e-6, 2e-6, 2e-6, 2.1e-6, 1.9e-6, 9e-6, 9e-6])

    def profile(*args: object, **kwargs: object) -> profiling.Profile:
        seconds = next(times)
        return profiling.Profile(math.nan, [("layer", "Conv", seconds)], (seconds,))

    monkeypatch.setattr(profiling, "profile_onnx", profile)
    monkeypatch.setattr(profiling, "OVERHEAD_EVERY", 2)
    splits = []
    measured, passes = profiling.measure_samples(
        convs, rounds=2, max_rounds=4, between=lambda: splits.append(len(splits))
    )
    assert passes == 3  # the third sped nothing up by over 10%: settled
    assert splits == [0, 1, 2]  # the overhead split all through the passes, every 2 samples
    assert sorted(s.seconds for s in measured) == [1.9e-6, 2e-6]


def test_an_in_place_sample_keeps_each_graphs_fastest_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a spell over one pass of the largest gate once set the fitted rate of every gate; a
    # spell over the graph without the gate must not make the gate look free either
    gate = next(s for s in sampling.synthetic_samples() if s.kind == "se")
    passes = iter(
        [((1300e-6, 1000e-6), [300e-6] * 3, [4, 4, 4]), ((1210e-6, 2900e-6), [0.0] * 3, [4, 5, 4])]
    )
    monkeypatch.setattr(profiling, "_in_context_pairs", lambda *args, **kwargs: next(passes))
    (measured,), _ = profiling.measure_samples([gate], rounds=2, max_rounds=2)
    assert measured.seconds == pytest.approx(210e-6)  # 1210 with it, 1000 without
    assert measured.nodes == 4
    # a pass fused into a convolution hides in the scatter of fastest times: the median of
    # its pairs' differences over all passes
    relu6 = next(s for s in sampling.synthetic_samples() if s.kind == "relu6")
    passes = iter(
        [((1.0, 1.0), [4e-6, 5e-6, 9e-6], [0] * 3), ((1.0, 1.0), [-1e-6, 3e-6, 6e-6], [0] * 3)]
    )
    (measured,), _ = profiling.measure_samples([relu6], rounds=2, max_rounds=2)
    assert measured.seconds == pytest.approx(4.5e-6) and measured.nodes == 0


def test_calibration_fits_every_kind(calibration: Calibration) -> None:
    assert set(calibration.rooflines) == set(LATENCY_KINDS)
    for kind, roof in calibration.rooflines.items():
        assert roof.bytes_per_s > 0 and roof.overhead_s >= 0
        assert math.isinf(roof.macs_per_s) == (kind in MEMORY_ONLY_KINDS)
        assert calibration.fit[kind]["samples"] >= 1
    assert calibration.machine == machine.machine_fingerprint()
    assert Calibration.from_json(json.loads(json.dumps(calibration.to_json()))) == calibration


def test_prediction_prices_each_kernel_layer(calibration: Calibration) -> None:
    report = profile_model(create_model("mobilenet_v2", width_mult=0.35), 96)
    prediction = predict_latency(report, calibration)
    convs = [r for r in report.layers if r.macs]
    relu6 = [r for r in report.layers if r.op == "ReLU6"]
    assert len(prediction.layers) == len(convs) + 1 + len(relu6)  # + the classifier's pooling
    assert prediction.nodes == len(convs) + 1  # ReLU6 runs inside its convolution
    kernels = sum(layer.seconds for layer in prediction.layers)
    assert prediction.runtime_nodes == prediction.nodes  # no layout conversions in V2's layers
    overheads = calibration.node_overhead_s * prediction.nodes + calibration.run_overhead_s
    assert prediction.seconds == pytest.approx(kernels + overheads)
    assert {layer.bound for layer in prediction.layers} <= {"compute", "memory"}
    bigger = predict_latency(profile_model(create_model("mobilenet_v2"), 224), calibration)
    assert bigger.ms > 3 * prediction.ms  # 300M against 12M mult-adds


def test_cache_is_reused_and_a_stale_one_recalibrated(
    cache: Path, calibration: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = machine.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(replace(calibration, runtime_version="0.0.1").to_json()))
    # the measuring itself is the module's calibration (a real one); here, what is cached when
    made: list[dict] = []

    def measure(*args: object, **kwargs: object) -> Calibration:
        made.append(kwargs)
        return replace(calibration, created="just now")

    monkeypatch.setattr(calib, "calibrate", measure)
    said: list[str] = []
    fresh = calib.load_calibration(say=said.append, **SMALL)
    assert made == [SMALL] and fresh.created == "just now"
    assert "stale" in said[0] and "0.0.1" in said[0] and "recalibrating" in said[0]
    assert fresh.runtime_version != "0.0.1"
    assert machine.read_calibration(path) == fresh
    said.clear()
    assert calib.load_calibration(say=said.append) == fresh and not said  # cached: no message
    monkeypatch.setattr(machine, "machine_fingerprint", lambda: "another CPU, 64 CPUs, riscv")
    assert "another machine" in machine.stale_reason(fresh)


def test_broken_cache_file_is_one_line(cache: Path) -> None:
    path = cache / "broken.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"runtime": "onnxruntime"}')
    with pytest.raises(MobileNetError, match="is not a latency calibration"):
        machine.read_calibration(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tflite"}, "cannot calibrate for runtime 'tflite'"),
        ({"threads": -1}, "threads must be 0"),
        ({"per_kind": 2}, "at least 3 layers per kind"),
    ],
)
def test_calibrate_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(MobileNetError, match=message):
        calib.calibrate(**kwargs)


# --------------------------------------------------------------------------- CLI, speed-up


def test_cost_latency_column_and_calibrate_show(
    cache: Path, calibration: Calibration, capsys: pytest.CaptureFixture[str]
) -> None:
    path = machine.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(calibration.to_json()))
    argv = ["cost", "mobilenet_v2", "--width-mult", "0.35", "--resolution", "96"]
    assert main([*argv, "--latency"]) == 0
    out = capsys.readouterr().out
    assert "pred. ms" in out and "memory" in out and "predicted latency in onnxruntime" in out
    assert main([*argv, "--latency", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latency"]["predicted_ms"] > 0
    assert {row["bound"] for row in data["latency"]["layers"]} <= {"compute", "memory"}
    assert main(["calibrate", "--show"]) == 0
    assert "pointwise K>=256" in capsys.readouterr().out


def test_calibrate_cli_errors(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--runtime", "tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot calibrate for runtime 'tflite'" in err
    assert main(["calibrate", "--show"]) == 2
    assert "no calibration for onnxruntime yet" in capsys.readouterr().err


def test_speedup_rows_carry_the_predicted_speedup(calibration: Calibration) -> None:
    # Rates chosen so that the depthwise layer is memory-bound and the others compute-bound.
    roofs = {kind: Roofline(1e11, 1e11, 0.0) for kind in LATENCY_KINDS}
    roofs["depthwise 3x3"] = Roofline(1e11, 1e9, 0.0)
    rates = replace(calibration, rooflines=roofs, node_overhead_s=0.0)
    shape = ConvShape(14, 64, 64)
    predicted, bound = predicted_speedup(shape, 1, rates)
    standard_s = 9 * 64 * 64 * 14 * 14 / 1e11
    depthwise_s = 4 * (2 * 64 * 14 * 14 + 64 * 9) / 1e9  # in, out, weights
    pointwise_s = 64 * 64 * 14 * 14 / 1e11
    assert bound == "memory"
    assert predicted == pytest.approx(standard_s / (depthwise_s + pointwise_s))
    assert predicted < shape.analytic_speedup / 2  # memory traffic eats the saving
    rows = measure_separable_speedup(
        [shape],
        batch_sizes=[1],
        memory_formats=["nchw"],
        modes=["forward"],
        budget_s=0.01,
        calibration=rates,
    )
    assert rows[0].predicted == pytest.approx(predicted)
    assert rows[0].to_dict()["depthwise_bound"] == "memory"


def test_weight_cache_fit_recovers_a_known_size() -> None:
    """Per-copy times made from a known warm-to-cold ramp give it back (to the grid's step)."""
    lo, hi, warm, cold = 12 * 2**20, 40 * 2**20, 1e-4, 4e-4
    weights = np.array([4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 128], dtype=float) * 2**20
    share = np.clip((hi - weights) / (hi - lo), 0.0, 1.0)
    seconds = warm * share + cold * (1 - share)
    fitted = profiling.fit_weight_cache(weights, seconds)
    assert fitted == pytest.approx((lo, hi, warm, cold), rel=0.1)


def test_weights_are_warm_then_ramp_to_cold(calibration: Calibration) -> None:
    """All weights cached up to the measured bytes, none past the cold mark, linear between;
    a calibration from another machine with no cold mark falls from warm to cold at once."""
    assert 0 < calibration.weight_cache_bytes <= calibration.weight_cold_bytes  # measured
    ramp = replace(calibration, weight_cache_bytes=10.0, weight_cold_bytes=30.0)
    assert [ramp.warm_fraction(b) for b in (0, 10, 15, 20, 30, 60)] == [1, 1, 0.75, 0.5, 0, 0]
    step = replace(calibration, weight_cache_bytes=10.0, weight_cold_bytes=0.0)
    assert [step.warm_fraction(b) for b in (10, 10.5)] == [1, 0]


def test_stream_overlap_fit_recovers_a_known_exponent(calibration: Calibration) -> None:
    """Cold times made from a known overlap exponent give it back; full overlap is max()."""
    warm = np.array([37e-6, 54e-6, 57e-6, 88e-6, 144e-6])
    stream = np.array([14e-6, 19e-6, 80e-6, 133e-6, 220e-6])
    cold = (warm**3 + stream**3) ** (1 / 3)
    assert profiling.fit_stream_overlap(warm, stream, cold) == pytest.approx(3.0, rel=0.1)
    assert calibration.stream_overlap == 0.0 or calibration.stream_overlap >= 1.0  # measured
    assert profiling.fit_stream_overlap(warm, stream, np.maximum(warm, stream)) == 0.0  # full: max
    full = replace(calibration, stream_overlap=0.0)
    assert full.with_stream(2.0, 1.0) == 2.0
    partial = replace(calibration, stream_overlap=3.0)
    assert 2.0 < partial.with_stream(2.0, 1.0) < 3.0


def test_classifier_is_priced_warm_when_the_weights_stay_cached(calibration: Calibration) -> None:
    """A fully connected layer costs its warm rate when all the network's weights fit in the
    measured cache, its cold rate when none do, and in between as the ramp says."""
    assert calibration.weight_cache_bytes > 0  # measured by calibrate()
    roofs = dict(calibration.rooflines)
    roofs["fc"] = Roofline(1e9, 1e9, 0.0)
    roofs["fc warm"] = Roofline(4e9, 4e9, 0.0)
    report = profile_model(create_model("mobilenet_v2", width_mult=0.35), 96)
    weight_bytes = cached_bytes(report)  # the weights and the activations a call passes

    def classifier_s(cache_bytes: float, cold_bytes: float) -> float:
        # full overlap: the cold classifier is its roofline (a measured finite overlap would
        # add a calibration-dependent hair of streaming on top)
        rates = replace(
            calibration,
            rooflines=roofs,
            weight_cache_bytes=cache_bytes,
            weight_cold_bytes=cold_bytes,
            stream_overlap=0.0,
        )
        return predict_latency(report, rates).layers[-1].seconds

    cold, warm = classifier_s(0.0, 0.0), classifier_s(2.0 * weight_bytes, 3.0 * weight_bytes)
    assert warm == pytest.approx(cold / 4)
    halfway = classifier_s(weight_bytes / 2, 3 * weight_bytes / 2)
    assert halfway == pytest.approx((cold + warm) / 2)


def test_calibrate_explains_a_per_node_term_below_zero() -> None:
    from types import SimpleNamespace

    from mobilenets.cli.latency import _node_note

    assert _node_note(SimpleNamespace(node_overhead_s=1e-6)) == ""
    assert "overlap" in _node_note(SimpleNamespace(node_overhead_s=-3e-6))
