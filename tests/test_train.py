"""Training: the run directory, exact resume, transfer learning, torchrun, and bad input.

Real training on the embedded digits, kept fast by a tiny model (width 0.35) at 16 px.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mobilenets.cli import main
from mobilenets.errors import MobileNetError
from mobilenets.models import MobileNetV2
from mobilenets.runs import load_run, load_state_dict_file, read_run_info
from mobilenets.train.finetune import inherit_init
from mobilenets.train.loop import model_kwargs, state_digest, train
from mobilenets.train.optim import make_optimizer, parameter_groups, warmup_cosine
from mobilenets.train.progress import TENSORBOARD_DIR, TRAIN_SCALARS
from mobilenets.train.recipe import TrainConfig
from mobilenets.train.run_dir import CURVES_FILE, METRICS_FILE, STATE_FILE

SLOW_FIXTURES = {"finished_run"}  # they train, import or time: conftest marks their tests slow

TINY = dict(model="mobilenet_v2", width_mult=0.35, resolution=16, batch_size=64, quiet=True)
TIMING = ("images_per_s", "epoch_time_s")


def tiny(out: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 2, "out": str(out), **overrides})


def weights_digest(run_dir: Path) -> str:
    model, _ = load_run(run_dir)
    return state_digest(model)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny(tmp_path_factory.mktemp("runs") / "full"))


def test_a_run_directory_holds_model_state_metrics_and_curves(finished_run: Path) -> None:
    info = read_run_info(finished_run)
    assert info.model == "mobilenet_v2" and info.epoch == 2
    assert info.model_kwargs == {
        "num_classes": 10, "in_chans": 3, "width_mult": 0.35, "dropout": 0.2, "small_input": True
    }  # fmt: skip
    assert info.input_size == (3, 16, 16) and info.class_names == [str(d) for d in range(10)]
    assert info.finished is True
    assert info.train_config["epochs"] == 2
    history = read_history(finished_run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert info.metrics["test_top1"] == history[-1]["test_top1"]
    assert history[-1]["lr"] == pytest.approx(0.0)  # the cosine ends at zero
    assert (finished_run / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(finished_run / STATE_FILE, weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "scheduler"}
    # Training moved the weights away from a fresh model with the same seed.
    torch.manual_seed(0)
    fresh = MobileNetV2(num_classes=10, width_mult=0.35, small_input=True)
    assert state_digest(fresh) != weights_digest(finished_run)


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag TensorBoard would show for ``run_dir``: (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), purge_orphaned_data=True)
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_run_directory_has_its_epochs_as_tensorboard_scalars(finished_run: Path) -> None:
    scalars = tensorboard_scalars(finished_run)
    assert set(scalars) == set(TRAIN_SCALARS.values())
    history = read_history(finished_run)
    for key, tag in TRAIN_SCALARS.items():
        assert [step for step, _ in scalars[tag]] == [1, 2]
        expected = [h[key] for h in history]
        assert [value for _, value in scalars[tag]] == pytest.approx(expected, rel=1e-6)


def test_resume_after_a_kill_ends_bit_identical(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    train(tiny(run, stop_after_epoch=1))  # ends as a run killed during epoch 2 would
    assert read_run_info(run).epoch == 1 and not read_run_info(run).finished
    train(TrainConfig(resume=str(run), quiet=True))
    assert weights_digest(run) == weights_digest(finished_run)
    assert without_timing(read_history(run)) == without_timing(read_history(finished_run))
    # each epoch once in TensorBoard too, across the two processes' event files
    steps = [step for step, _ in tensorboard_scalars(run)["top1/test"]]
    assert steps == [1, 2]


@pytest.mark.slow
def test_resume_after_a_real_kill_ends_bit_identical(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "sigkilled"
    argv = ["--width-mult", "0.35", "--resolution", "16", "--batch-size", "64", "--epochs", "2"]
    command = [sys.executable, "-m", "mobilenets", "train", *argv, "--quiet", "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / STATE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no cleanup, as a machine that dies; epoch 2 is under way
        process.wait()
    assert read_run_info(run).epoch == 1
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert weights_digest(run) == weights_digest(finished_run)


@pytest.mark.slow
def test_ema_saves_the_moving_average_and_resumes_it(tmp_path: Path) -> None:
    """With ``ema`` the run directory holds the moving average of the weights (BatchNorm
    statistics included), each epoch scores it and the last step's weights
    (``last_step_test_*``), and a run stopped after epoch 1 and resumed ends with the same
    average, bit for bit."""
    full = train(tiny(tmp_path / "ema", ema=0.9))
    history = read_history(full)
    assert all({"test_top1", "last_step_test_top1"} <= set(h) for h in history)
    saved, info = load_run(full)
    assert info.train_config["ema"] == 0.9
    trained = torch.load(full / STATE_FILE, weights_only=False)
    last_step = trained["model"]
    assert any(not torch.equal(v, last_step[k]) for k, v in saved.state_dict().items())
    average = {k.removeprefix("module."): v for k, v in trained["ema"].items()}
    assert all(torch.equal(v, average[k]) for k, v in saved.state_dict().items())

    killed = tmp_path / "killed"
    train(tiny(killed, ema=0.9, stop_after_epoch=1))
    train(TrainConfig(resume=str(killed), quiet=True))
    assert weights_digest(killed) == weights_digest(full)
    plain = tiny(tmp_path / "bad", ema=1.0)
    with pytest.raises(MobileNetError, match=r"ema decay must be in \[0, 1\)"):
        train(plain)


def test_resume_of_a_finished_run_is_refused(finished_run: Path) -> None:
    before = (finished_run / "model.safetensors").read_bytes()
    with pytest.raises(MobileNetError, match="is finished"):
        train(TrainConfig(resume=str(finished_run), quiet=True))
    assert (finished_run / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused(finished_run: Path) -> None:
    with pytest.raises(MobileNetError, match="drop --lr"):
        train(TrainConfig(resume=str(finished_run), epochs=5, lr=0.01))


def test_training_into_an_existing_run_is_refused(finished_run: Path) -> None:
    with pytest.raises(MobileNetError, match="already holds a run"):
        train(tiny(finished_run))


def test_resume_of_an_incomplete_directory_is_refused(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(MobileNetError, match="does not exist"):
        train(TrainConfig(resume=str(tmp_path / "missing"), quiet=True))
    with pytest.raises(MobileNetError, match=r"model\.json is missing"):
        train(TrainConfig(resume=str(tmp_path), quiet=True))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.json").write_bytes((finished_run / "model.json").read_bytes())
    info = json.loads((partial / "model.json").read_text())
    info["finished"] = False
    (partial / "model.json").write_text(json.dumps(info))
    with pytest.raises(MobileNetError, match=r"model\.safetensors is missing"):
        train(TrainConfig(resume=str(partial), quiet=True))
    (partial / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(MobileNetError, match=r"cannot resume .* not a readable safetensors"):
        train(TrainConfig(resume=str(partial), quiet=True))
    (partial / "model.safetensors").write_bytes((finished_run / "model.safetensors").read_bytes())
    with pytest.raises(MobileNetError, match=r"train_state\.pt is missing"):
        train(TrainConfig(resume=str(partial), quiet=True))
    (partial / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(MobileNetError, match="unreadable"):
        train(TrainConfig(resume=str(partial), quiet=True))


class BlowsUpInEpoch2(MobileNetV2):
    """Returns NaN logits from the first training step of epoch 2 on."""

    steps_per_epoch = math.ceil(1438 / 64)  # the digits' train split, the last batch partial

    def __init__(self) -> None:
        super().__init__(num_classes=10, width_mult=0.35, small_input=True)
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.training:
            self.steps += 1
            if self.steps > self.steps_per_epoch:
                return logits * float("nan")
        return logits


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "nan"
    with pytest.raises(MobileNetError, match=r"loss became nan at epoch 2.*epoch 1 .* is kept"):
        train(tiny(run), model=BlowsUpInEpoch2())
    info = read_run_info(run)
    assert info.epoch == 1 and not info.finished
    assert torch.load(run / STATE_FILE, weights_only=True)["epoch"] == 1
    model, _ = load_run(run)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_warmup_then_cosine_schedule() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.05)
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))


def test_no_weight_decay_on_batchnorm_and_biases_and_the_papers_rmsprop() -> None:
    model = MobileNetV2(num_classes=10, width_mult=0.35, small_input=True)
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    undecayed = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in undecayed) == (".bn." in name or name.endswith(".bias")), name
    rmsprop = make_optimizer(TrainConfig(optimizer="rmsprop"), model)
    assert isinstance(rmsprop, torch.optim.RMSprop)
    assert rmsprop.defaults["alpha"] == 0.9 and rmsprop.defaults["momentum"] == 0.9


def test_small_input_is_used_below_128_px() -> None:
    config = TrainConfig(model="mobilenet_v1")
    assert model_kwargs(config, 10, 3, 32)["small_input"] is True
    assert model_kwargs(config, 10, 3, 224)["small_input"] is False
    forced = TrainConfig(small_input=False)
    assert model_kwargs(forced, 10, 3, 32)["small_input"] is False


def digit_folder(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class: int = 30) -> Path:
    """An image folder root/<class>/<n>.png of real digits, 8x8 grey PNGs."""
    digits = load_digits()
    for c in classes:
        images = digits.images[digits.target == c][:per_class]
        (root / str(c)).mkdir(parents=True)
        for i, img in enumerate(images):
            pixels = (img * 255 / 16).round().astype("uint8")
            Image.fromarray(pixels, mode="L").save(root / str(c) / f"{i}.png")
    return root


@pytest.mark.slow
def test_init_replaces_a_classifier_of_another_class_count_and_freezes_features(
    finished_run: Path, tmp_path: Path
) -> None:
    folder = digit_folder(tmp_path / "three")
    run = train(
        tiny(
            tmp_path / "transfer",
            data=str(folder),
            epochs=1,
            batch_size=16,
            init=str(finished_run),
            freeze_features=True,
        )
    )
    before, after = load_state_dict_file(finished_run / "model.safetensors"), load_run(run)[0]
    assert after.classifier.fc.out_features == 3
    for name, tensor in after.state_dict().items():
        if name.startswith("features."):  # weights and BatchNorm statistics alike
            assert torch.equal(tensor, before[name]), name
    assert read_run_info(run).class_names == ["0", "1", "2"]


def test_init_from_another_architecture_is_refused(finished_run: Path, tmp_path: Path) -> None:
    config = tiny(tmp_path / "v1", model="mobilenet_v1", init=str(finished_run))
    with pytest.raises(MobileNetError, match="do not fit the model"):
        train(config)
    assert not (tmp_path / "v1" / "model.json").exists()


@pytest.mark.slow
def test_init_takes_the_runs_model_width_and_input_size_unless_told(
    finished_run: Path, tmp_path: Path
) -> None:
    """`train --data FOLDER --init RUN` builds RUN's architecture (here V2 at width 0.35,
    16 px), not the defaults (width 0.5, an image folder's 224 px), which failed with
    'shape mismatch(es) ... pass --width-mult'; a flag the command gives still wins."""
    folder = digit_folder(tmp_path / "three", per_class=10)
    common = ["train", "--data", str(folder), "--init", str(finished_run), "--epochs", "1"]
    assert main([*common, "--quiet", "--out", str(tmp_path / "inherited")]) == 0
    info = read_run_info(tmp_path / "inherited")
    assert info.model == "mobilenet_v2" and info.model_kwargs["width_mult"] == 0.35
    assert info.input_size == (3, 16, 16) and info.train_config["width_mult"] == 0.35
    out = tmp_path / "told"
    assert main([*common, "--resolution", "24", "--quiet", "--out", str(out)]) == 0
    info = read_run_info(out)
    assert info.input_size == (3, 24, 24) and info.model_kwargs["width_mult"] == 0.35
    defaults = inherit_init(TrainConfig(), None)
    assert (defaults.model, defaults.width_mult, defaults.resolution) == ("mobilenet_v2", 0.5, None)


@pytest.mark.slow
def test_two_processes_under_torchrun_end_with_the_same_weights(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mobilenets", "train", "--width-mult", "0.35", "--resolution", "16",
        "--epochs", "1", "--batch-size", "64", "--quiet", "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    info = read_run_info(run)
    assert info.world_size == 2
    digests = info.replica_sha256
    assert len(digests) == 2 and digests[0] == digests[1] == weights_digest(run)
    assert done.stdout.count("epoch   1/1") == 1  # only rank 0 prints


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{tmp}/missing"], "data not found"),
        (["--data", "{tmp}/empty"], "data directory is empty"),
        (["--data", "{tmp}/noimages"], "class folder has no images"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--lr", "-1"], "lr must be positive"),
        (["--model", "resnet50"], "unknown model 'resnet50'"),
        (["--resolution", "4"], "resolution must be an integer >= 8"),
        (["--init", "{tmp}/missing.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("no images here")
    out = tmp_path / "run"
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["train", *TINY_ARGS, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


TINY_ARGS = [
    "--width-mult",
    "0.35",
    "--resolution",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--quiet",
]
