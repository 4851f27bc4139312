"""Shared fixtures and helpers of the test suite.

- one trained MobileNetV1 and one trained MobileNetV2 run for the whole session (training is
  the slow part of the suite: a module that needs a trained run takes one of these, and must
  not change it beyond adding files of its own);
- :func:`built_once`, which keeps such a fixture's result on disk: the modules that load the
  device runtimes run each test in a forked process (``pytest.mark.forked``: ExecuTorch,
  LiteRT and OpenVINO keep threads and state that crashed later, unrelated tests when they
  shared the suite's process), and a forked test cannot hand a fixture's value back;
- the helpers several test modules need: the one-line error assertion, a BatchNorm randomiser
  and the small BN-folded models built with it for the float steps before int8, a pickle that
  runs code when loaded, digit PNGs as a user would hand them to predict.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shlex
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fake_quant import FakeQuantModel
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.models import create_model

# --------------------------------------------------------------------------- forked tests


def _one_intra_op_thread() -> None:
    """A forked test runs PyTorch on one thread: the OpenMP pool PyTorch inherited from the
    suite's process has no threads behind it after fork(), and a parallel region waits on it
    forever (what DataLoader workers do for the same reason)."""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_intra_op_thread)

# Training picks its thread count from the load it measures (mobilenets.train.devices.pick_threads),
# and results differ in the last bits between thread counts: the suite fixes one thread per
# test process (two processes on two cores), so runs compared bit for bit use the same count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# --------------------------------------------------------------------------- trained runs


SLOW_FIXTURES = frozenset({"trained_v2", "exported"})

# Runtimes that start thread pools (MLIR's for LiteRT, XNNPACK's, TBB's): a test process that
# loaded one and then forks a test hands the child a pool without threads, and the child's
# next conversion waits on it forever. A test parametrized with one runs forked.
THREADED_RUNTIMES = frozenset({"executorch", "litert", "openvino"})

# Imported once in a test process before its first slow forked test, so that each fork finds
# them loaded instead of importing them again (seconds a fork). Only modules whose import
# starts no thread (checked in /proc/self/task): LiteRT's converter pulls in JAX, which starts
# threads and warns at every fork, and OpenVINO's import starts one, so those two import in
# their forks.
FORK_PRELOADS = (
    "executorch.exir",
    "executorch.runtime",
    "executorch.backends.xnnpack.partition.xnnpack_partitioner",
    "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    "torchao.quantization.pt2e.quantize_pt2e",
    "onnxscript",
)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Load :data:`FORK_PRELOADS` in this process before a slow forked test forks (the fast
    lane loads no runtime, so it pays for none of them)."""
    if item.get_closest_marker("forked") and item.get_closest_marker("slow"):
        # outside any test, where pytest collects warnings: their import warnings stay quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in FORK_PRELOADS:
                with contextlib.suppress(ImportError):
                    importlib.import_module(name)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a fixture which trains, imports or lowers is slow: the fast lane
    (``-m "not slow"``) trains nothing and loads no runtime. Such fixtures are conftest's
    :data:`SLOW_FIXTURES` and those a test module names in its own ``SLOW_FIXTURES``; a test
    that trains or lowers by itself carries ``@pytest.mark.slow``."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {}).values()
        if THREADED_RUNTIMES & set(map(str, params)) and not item.get_closest_marker("forked"):
            raise pytest.UsageError(f"{item.nodeid} loads a runtime: its module must be forked")
        slow = SLOW_FIXTURES | getattr(getattr(item, "module", None), "SLOW_FIXTURES", set())
        if slow & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # the longest tests start first: started late, the suite's end waits for them alone
    items.sort(key=lambda item: getattr(item, "originalname", item.name) not in LONGEST)


# the longest tests, each in a forked module (moving them keeps no module's fixtures from
# being shared): started last, the suite's end would wait for them alone
LONGEST = frozenset(
    {
        "test_a_head_exports_fp32_and_int8_and_predicts_through_them",
        "test_xnnpack_qat_ships_the_ranges_it_trained_with",
        "test_qat_resumes_to_the_same_weights_and_refuses_another_config",
        "test_bench_times_runtimes_in_fp32_and_int8",
    }
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Create the session's temporary directory in pytest's own process. Made lazily inside a
    forked test instead, each fork would make its own and rebuild every ``built_once``
    fixture (10 s of training per test when a forked module ran first)."""
    session.config._tmp_path_factory.getbasetemp()  # pytest's TempPathFactory for the session


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """The session's temporary directory that every test process sees: under pytest-xdist
    each worker's own (``pytest-N/popen-gw0``) sits in the session's (``pytest-N``)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


BUILDS_FILE = "builds.log"  # one line per build: what was built, by which process


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """``build(directory)`` once per session, whichever test process (xdist worker, forked
    test) asks first; the others wait for it on a file lock and find the directory it filled
    (a marker written last says it was finished). Each build is logged to ``builds.log``, so a
    test can check that nothing was built twice."""
    root = shared_root(factory) / "built-once"
    root.mkdir(parents=True, exist_ok=True)
    directory = root / name
    finished = directory / ".built"
    with FileLock(str(root / f"{name}.lock")):
        if not finished.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            build(directory)
            finished.write_text(json.dumps(_digests(directory)))  # what it held when built
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with (root / BUILDS_FILE).open("a") as log:
                log.write(f"{name} {worker} {os.getpid()}\n")
    return directory


def copy_run(run: Path, to: Path) -> Path:
    """A copy of ``run`` at ``to`` (its lock left behind), for tests that write into a run:
    ``export`` records itself in ``model.json``, ``evaluate`` writes its figure there, and a
    session's shared runs stay as they were built (checked when the session ends)."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In the session's main process: fail the session if a shared run was built twice
    (once per worker instead of once per session) or a test changed one of its files."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    root = shared_root(session.config._tmp_path_factory) / "built-once"
    problems = []
    log = root / BUILDS_FILE
    names = log.read_text().split("\n") if log.exists() else []
    built = [line.split()[0] for line in names if line]
    problems += [f"{n} was built {built.count(n)} times" for n in sorted(set(built))
                 if built.count(n) > 1]  # fmt: skip
    for marker in root.glob("*/.built"):
        recorded = json.loads(marker.read_text())
        now = _digests(marker.parent)
        changed = [f for f, digest in recorded.items() if now.get(f) != digest]
        problems += [f"a test changed {marker.parent.name}/{f}" for f in changed]
    if problems:
        print("\nshared test runs: " + "; ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def trained_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small V2 trained for three epochs on the digits at 16 px."""
    from mobilenets.train.loop import train
    from mobilenets.train.recipe import TrainConfig

    config = TrainConfig(
        model="mobilenet_v2",
        width_mult=0.35,
        resolution=16,
        epochs=3,
        quiet=True,
        out="",
    )
    return (
        built_once(tmp_path_factory, "v2", lambda d: train(replace(config, out=str(d / "run"))))
        / "run"
    )


@dataclass(frozen=True)
class Exported:
    """One program ``mobilenets export --json`` wrote from a copy of :func:`trained_v2`: the
    copy (its ``model.json`` records the export), the program and the command's report."""

    run: Path
    path: Path
    report: dict


# what the shared programs are checked on: enough images for agreement to mean something
EXPORT_CHECK = {
    False: ["--verify-images", "96"],
    True: ["--calibration", "64", "--verify-images", "128"],
}


@pytest.fixture(scope="session")
def exported(
    trained_v2: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, bool], Exported]:
    """``exported(fmt, int8)``: :func:`trained_v2` exported to ``fmt`` by the command line,
    once per session for every test that reads a program (lowering an ExecuTorch or LiteRT
    program takes tens of seconds). Tests read it and write nothing into it."""
    from mobilenets.cli import main
    from mobilenets.deploy.export import FORMATS

    def get(fmt: str, int8: bool) -> Exported:
        suffix = FORMATS[fmt].suffix
        name = f"model.int8{suffix}" if int8 else f"model{suffix}"

        def build(directory: Path) -> None:
            run = copy_run(trained_v2, directory / "run")
            argv = ["export", str(run), "--format", fmt, "--out", str(directory / name)]
            argv += ["--int8"] * int8 + EXPORT_CHECK[int8] + ["--json"]
            report = io.StringIO()
            with contextlib.redirect_stdout(report):
                assert main(argv) == 0
            (directory / "report.json").write_text(report.getvalue())

        directory = built_once(
            tmp_path_factory, f"export-{fmt}-{'int8' if int8 else 'fp32'}", build
        )
        report = json.loads((directory / "report.json").read_text())
        return Exported(directory / "run", directory / name, report)

    return get


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def raises_one_line(match: str) -> Iterator[pytest.ExceptionInfo[MobileNetError]]:
    """The errors users see: a MobileNetError whose message matches ``match`` and is one line
    (the CLI prints it as is)."""
    with pytest.raises(MobileNetError, match=match) as info:
        yield info
    assert "\n" not in str(info.value), f"not one line: {info.value}"


def check_one_line_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's answer to a user's mistake: exit status 2, nothing on stdout, and
    one ``error:`` line that contains ``message``."""
    from mobilenets.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def meta_model(name: str, **kwargs: object) -> nn.Module:
    """``create_model(name, **kwargs)`` on the meta device: shapes without weights, so
    counting parameters and mult-adds costs no initialisation and no arithmetic."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm with the running statistics and affine terms of a trained network (in eval
    mode): with the initial ones (mean 0, variance 1, gamma 1, beta 0) BatchNorm is nearly the
    identity, and folding it or measuring it would test almost nothing."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def folded_random(name: str = "mobilenet_v2", seed: int = 0) -> nn.Module:
    """A width-0.35, 10-class ``name`` with seeded weights and randomized BatchNorm, folded:
    what the float steps before int8 (equalize, AdaRound, bias correction) take."""
    torch.manual_seed(seed)
    model = create_model(name, width_mult=0.35, num_classes=10)
    return fold_batchnorm(randomize_batchnorm(model, seed))


def int8_logits(model: nn.Module, calibration: list[torch.Tensor]) -> torch.Tensor:
    """``model``'s logits on ``calibration`` with every layer int8 in the simulator,
    calibrated on the same images."""
    fq = FakeQuantModel(model)
    fq.calibrate(calibration)
    fq.set(enabled=fq.names())
    with torch.no_grad():
        return torch.cat([fq(x) for x in calibration])


def uniform_batches(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded batches of 8 images, ``size`` px, uniform in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(8, 3, size, size, generator=g) * 2 - 1 for _ in range(n)]


class CodeCarrying:
    """Unpickling this runs a shell command (it touches ``marker``): what a malicious
    checkpoint or data file does. A test passes when the marker never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def write_digit_png(path: Path, image: np.ndarray) -> Path:
    """One of scikit-learn's 8x8 digits (values 0..16) as an 8-bit grey PNG."""
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="session")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """Twenty real digits as PNG files with their labels, as a user would hand them to
    predict."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("pngs")
    digits = load_digits()
    return [
        (write_digit_png(root / f"digit{i}_{digits.target[i]}.png", digits.images[i]),
         int(digits.target[i]))
        for i in range(0, 200, 10)
    ]  # fmt: skip
