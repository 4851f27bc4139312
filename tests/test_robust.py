"""Runs that survive real use: one writer per run directory, full and read-only disks, tiny
data sets, folders and globs for predict, resume refusals and longer schedules.

Nothing is lost in any case: after every failure the previous checkpoint loads and evaluates to
the accuracy it had before.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_run, raises_one_line
from PIL import Image

from mobilenets.cli import main
from mobilenets.data.loader import FoldedBatchSampler
from mobilenets.evaluation.evaluate import evaluate
from mobilenets.evaluation.predict import find_images, predict
from mobilenets.io import LOCK_FILE, DirectoryLock, atomic_write_text, host_name
from mobilenets.runs import read_run_info
from mobilenets.train.loop import SmallDataWarning, train
from mobilenets.train.recipe import TrainConfig
from mobilenets.train.run_dir import STATE_FILE, new_run_dir

SLOW_FIXTURES = {"one_epoch_run"}  # they train, import or time: conftest marks their tests slow

TINY = dict(model="mobilenet_v1", width_mult=0.25, resolution=16, quiet=True)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (a run killed with -9)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- one writer


def test_a_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path / "run") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
        with raises_one_line(rf"in use by another run \(process {os.getpid()} on this host\)"):
            DirectoryLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run").exists()  # made for the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with DirectoryLock(tmp_path / "kept"):
        pass
    assert [p.name for p in (tmp_path / "kept").iterdir()] == []  # no temporary files left


def test_a_second_train_into_a_held_directory_is_refused_with_the_holder(
    tmp_path: Path, live_process: subprocess.Popen, capsys
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lock = {"pid": live_process.pid, "host": socket.gethostname()}
    (run / LOCK_FILE).write_text(json.dumps(lock))
    argv = ["train", "--model", "mobilenet_v1", "--epochs", "1", "--quiet", "--out", str(run)]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert f"process {live_process.pid} on this host" in err and str(run) in err
    assert json.loads((run / LOCK_FILE).read_text()) == lock  # the holder keeps its lock
    lock["host"] = "elsewhere.example"  # another host's pid cannot be checked: refused
    (run / LOCK_FILE).write_text(json.dumps(lock))
    with raises_one_line("on elsewhere.example"):
        DirectoryLock(run).acquire()


def test_a_run_without_out_passes_over_a_directory_another_run_holds(
    tmp_path: Path, live_process: subprocess.Popen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started at once without --out: the second takes the next name, not the
    first's directory (which holds a lock and nothing else yet)."""
    monkeypatch.chdir(tmp_path)
    held = tmp_path / "runs" / "mobilenet_v1"
    held.mkdir(parents=True)
    (held / LOCK_FILE).write_text(json.dumps({"pid": live_process.pid, "host": host_name()}))
    assert new_run_dir(TrainConfig(model="mobilenet_v1")) == Path("runs") / "mobilenet_v1-2"


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, dead_pid: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"taking over the lock of process {dead_pid}"):
        lock = DirectoryLock(run)
        lock.acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / LOCK_FILE).exists()


def test_readers_need_no_lock(trained_v2: Path, tmp_path: Path, live_process, digit_pngs) -> None:
    run = copy_run(trained_v2, tmp_path / "run")
    (run / LOCK_FILE).write_text(json.dumps({"pid": live_process.pid, "host": "x"}))
    assert (
        evaluate(run, plot=tmp_path / "a.png").top1 == evaluate(run, plot=tmp_path / "b.png").top1
    )
    assert predict(run, [digit_pngs[0][0]]).predictions[0].error is None


# --------------------------------------------------------------------------- full disks


def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "before")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with raises_one_line(rf"cannot write {target}: No space left on device"):
        atomic_write_text(target, "after")
    assert target.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _fill_disk_at(limit: int):
    """Run a child with files limited to ``limit`` bytes: writes past it fail (EFBIG), as on
    a full disk, in Python, C and Rust writers alike."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_fails_in_one_line_and_loses_nothing(
    trained_v2: Path, tmp_path: Path
) -> None:
    run = copy_run(trained_v2, tmp_path / "run")
    accuracy = evaluate(run, plot=tmp_path / "before.png").top1
    before = files_of(run)
    epochs = read_run_info(run).epoch
    command = [sys.executable, "-m", "mobilenets", "train", "--resume", str(run)]
    command += ["--epochs", str(epochs + 1), "--quiet"]
    weights = (run / "model.safetensors").stat().st_size
    done = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=_fill_disk_at(weights // 2)
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert f"cannot write {run / 'model.safetensors'}: File too large" in done.stderr
    assert files_of(run) == before  # no temporary files, no lock, every file as it was
    assert evaluate(run, plot=tmp_path / "after.png").top1 == accuracy


def test_a_figure_on_a_read_only_disk_fails_in_one_line(
    trained_v2: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = copy_run(trained_v2, tmp_path / "run")
    figure = run / "confusion_matrix.png"
    before = figure.read_bytes() if figure.exists() else None

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    assert main(["evaluate", str(run)]) == 2
    err = one_error_line(capsys)
    assert f"{figure}: Read-only file system" in err
    assert (figure.read_bytes() if figure.exists() else None) == before


# --------------------------------------------------------------------------- small data


def test_batches_use_every_item_and_never_train_on_one_alone() -> None:
    def batches(n: int, size: int) -> list[int]:
        sampler = FoldedBatchSampler(range(n), size)
        out = [len(b) for b in sampler]
        assert len(out) == len(sampler) and sum(out) == n
        return out

    assert batches(9, 8) == [9]
    assert batches(17, 8) == [8, 9]
    assert batches(18, 8) == [8, 8, 2]
    assert batches(3, 8) == [3]
    assert batches(1, 8) == [1]
    assert batches(0, 8) == []


def image_folder(root: Path, per_class: int, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            pixels[..., c] = 255  # each class its own colour
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one image per class", "a batch plus one"])
def test_tiny_data_sets_train_with_a_warning(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "data"
    if layout == "one image per class":
        image_folder(data / "train", 1)
        image_folder(data / "val", 1)
        batch = 32
    else:  # 5 train images per class, 15 in all: batches of 7, 7 and 1 -> 7 and 8
        image_folder(data, 6)
        batch = 7
    config = TrainConfig(
        **TINY, data=str(data), epochs=1, batch_size=batch, out=str(tmp_path / "run")
    )
    if batch == 32:
        with pytest.warns(SmallDataWarning, match="3 images, fewer than a batch of 32"):
            run = train(config)
    else:
        run = train(config)
    info = read_run_info(run)
    assert info.finished and info.epoch == 1
    assert 0 <= evaluate(run).top1 <= 1


# --------------------------------------------------------------------------- predict


def test_predict_takes_folders_and_globs_and_reports_bad_images_as_rows(
    trained_v2: Path, digit_pngs, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for path, _ in digit_pngs[:3]:
        shutil.copy(path, folder / path.name)
    shutil.copy(digit_pngs[3][0], folder / "nested" / "deep.PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(digit_pngs[0][0].read_bytes()[:40])
    found = find_images([folder])
    assert [Path(p).name for p in found.skipped] == ["notes.txt"]
    assert len(found.images) == 5 and str(folder / "nested" / "deep.PNG") in found.images

    report = predict(trained_v2, [folder, str(tmp_path / "photos" / "digit*.png"), "nope.png"])
    rows = {Path(p.image).name: p for p in report.predictions}
    assert "cannot read image" in rows["broken.png"].error
    assert rows["nope.png"].error == "image not found: nope.png"
    assert len(report.predictions) == 5 + 3 + 1 and report.errors == 2
    assert all(len(p.classes) == 5 for p in report.predictions if p.error is None)

    assert main(["predict", str(trained_v2), str(folder), "--csv", "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "image,class_1,probability_1,class_2,probability_2,error"
    assert "skipped 1 file(s) that are not images: " in captured.err and "notes.txt" in captured.err
    assert len(lines) == 1 + 5 and any("cannot read image" in line for line in lines)
    assert main(["predict", str(trained_v2), str(folder / "digit*.png"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["predictions"]) == 3 and data["skipped"] == []
    assert main(["predict", str(trained_v2), str(folder)]) == 1
    out = capsys.readouterr().out
    assert "skipped 1 file(s) that are not images" in out and "error: cannot read" in out


def test_predict_of_a_folder_without_images_is_one_line(trained_v2: Path, tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with raises_one_line("no image files in"):
        predict(trained_v2, [tmp_path])


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(TrainConfig(**TINY, epochs=1, out=str(tmp_path_factory.mktemp("r") / "run")))


def test_a_finished_run_grows_with_more_epochs(one_epoch_run: Path, tmp_path: Path) -> None:
    run = copy_run(one_epoch_run, tmp_path / "run")
    with raises_one_line("is finished .* --epochs N for N > 1"):
        train(TrainConfig(resume=str(run), quiet=True))
    with raises_one_line("--epochs can only grow"):
        train(TrainConfig(resume=str(run), epochs=1, quiet=True), epochs_given=True)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    info = read_run_info(run)
    assert info.epoch == 2 and info.finished and info.train_config["epochs"] == 2
    assert torch.load(run / STATE_FILE, weights_only=True)["epoch"] == 2
    assert not (run / LOCK_FILE).exists()


def test_resume_refuses_unreadable_weights_or_state(one_epoch_run: Path, tmp_path: Path) -> None:
    for name, content in [("model.safetensors", None), (STATE_FILE, b"\x00" * 10)]:
        run = copy_run(one_epoch_run, tmp_path / name)
        if content is None:
            (run / name).unlink()
        else:
            (run / name).write_bytes(content)
        with raises_one_line(f"cannot resume {run}"):
            train(TrainConfig(resume=str(run), epochs=2, quiet=True))


def test_init_with_another_width_names_the_width_and_the_first_layer(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    config = TrainConfig(**{**TINY, "width_mult": 0.5}, init=str(one_epoch_run), epochs=1)
    config.out = str(tmp_path / "run")
    with raises_one_line(r"first features\.0\..*weights are width 0\.25: pass --width-mult 0\.25"):
        train(config)


# --------------------------------------------------------------------------- the CLI


def test_the_cli_with_no_command_prints_its_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mobilenets"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "usage: mobilenets" in done.stdout and "train" in done.stdout


def test_an_interrupted_training_says_how_to_continue(
    one_epoch_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = copy_run(one_epoch_run, tmp_path / "run")

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr("mobilenets.train.loop._Trainer.run", interrupt)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err == (
        f"error: interrupted; the last finished epoch is kept in {run}; "
        f"continue with mobilenets train --resume {run}\n"
    )
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_without_a_terminal_training_prints_lines_within_an_epoch(tmp_path: Path, capsys) -> None:
    argv = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "16"]
    argv += ["--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    batch_lines = [line for line in out.splitlines() if "batch " in line and "loss" in line]
    assert batch_lines[0].startswith("epoch   1/1  batch 1/6  loss ")
    assert len(batch_lines) == 6  # 1438 images in batches of 256: a line per batch


def test_quantize_calibrates_on_all_there_is_when_asked_for_more() -> None:
    from torch.utils.data import TensorDataset

    from mobilenets.deploy.images import calibration_subset

    sixteen = TensorDataset(torch.zeros(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))
    with pytest.warns(UserWarning, match="calibrating on all 16 images"):
        subset = calibration_subset(sixteen, 256)
    assert len(subset) == 16


def test_the_curves_name_the_best_epoch_in_the_legend() -> None:
    from mobilenets.plots import training_curves_figure

    history = [
        {"epoch": e, "train_loss": 1 / e, "test_loss": 1 / e, "train_top1": t - 0.02,
         "test_top1": t}
        for e, t in [(1, 0.5), (2, 0.9), (3, 0.85)]
    ]  # fmt: skip
    figure = training_curves_figure(history)
    legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert "best test 90.00% (epoch 2)" in legend
    assert not figure.axes[1].texts  # no label written over the curves
