"""onnxruntime sessions, ONNX files and the run description they carry.

An exported file must be usable on its own, away from the run directory it came from: its
``metadata_props`` hold the class names and the preprocessing (mean, std, input size) as plain
JSON values any consumer can read, and the whole run description under ``mobilenets.run`` so
that quantization can rebuild the training data for calibration and evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch.utils.data import Dataset

from mobilenets.deploy.images import batches
from mobilenets.errors import MobileNetError
from mobilenets.runs import RunInfo

DEFAULT_PROVIDER = "CPUExecutionProvider"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RUN_KEY = "mobilenets.run"
PRECISION_KEY = "mobilenets.precision"
RUN_DIR_KEY = "mobilenets.run_dir"


# --------------------------------------------------------------------------- metadata


def onnx_metadata(
    info: RunInfo, precision: str, run_dir: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: readable keys plus the full description.

    ``crop_pct`` completes the preprocessing: resize the shorter side to
    ``input_size / crop_pct``, centre-crop ``input_size``, normalise with ``mean`` and ``std``.
    ``run_dir``, the run directory exported from (absolute), lets ``evaluate`` score the
    run's fp32 weights beside the program's. Every format records these keys
    (:func:`mobilenets.deploy.program.read_program_info` reads them back).
    """
    where = {} if run_dir is None else {RUN_DIR_KEY: str(Path(run_dir).resolve())}
    return {
        **where,
        "class_names": json.dumps(list(info.class_names)),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": json.dumps(list(info.input_size)),
        "crop_pct": json.dumps(info.crop_pct),
        PRECISION_KEY: precision,
        RUN_KEY: json.dumps(info.to_json()),
    }


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Add or replace ``props`` in ``model.metadata_props``, keeping the other entries."""
    kept = {p.key: p.value for p in model.metadata_props if p.key not in props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**kept, **props})


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def run_info_of(model: onnx.ModelProto, source: str | os.PathLike[str]) -> RunInfo:
    """The run description an ONNX file was exported with, or a one-line error."""
    return run_info_from(metadata(model), source)


def run_info_from(
    props: dict[str, str], source: str | os.PathLike[str], missing: str = ""
) -> RunInfo:
    """The run description in an exported program's metadata ``props`` (any format), or one
    line saying it has none (``missing`` adds where it should have been) or that it is
    malformed."""
    if RUN_KEY not in props:
        raise MobileNetError(
            f"{source} records no class names or preprocessing{missing}; export the run with "
            "`mobilenets export`"
        )
    try:
        data = json.loads(props[RUN_KEY])
    except json.JSONDecodeError as e:
        raise MobileNetError(f"{source} has malformed mobilenets metadata: {e}") from None
    return RunInfo.from_json(data, f"{source} metadata")


# --------------------------------------------------------------------------- files, sessions


def load_onnx(path: str | os.PathLike[str], check: bool = True) -> onnx.ModelProto:
    """Read an ONNX file, refusing anything that is not one with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MobileNetError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
        if check:
            onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MobileNetError(f"{path} is not a valid ONNX model: {first_line}") from None
    if not model.graph.node:
        raise MobileNetError(f"{path} is not a valid ONNX model: its graph is empty")
    return model


def available_providers() -> list[str]:
    """The onnxruntime execution providers a session can use here.

    OpenVINO is not among them: its onnxruntime plugin registers on any x86 CPU but lists no
    device on non-Intel ones, so ``mobilenets export --format openvino`` uses OpenVINO's own
    runtime instead (:mod:`mobilenets.deploy.targets.openvino`), which runs on both.
    """
    return list(ort.get_available_providers())


def short_provider_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``CUDA``: the name users type and tables show."""
    return provider.removesuffix("ExecutionProvider")


def check_provider(provider: str) -> str:
    """The full name of ``provider`` if this machine has it, else a one-line error.

    Short names are accepted: ``cpu`` and ``cuda`` stand for ``CPUExecutionProvider`` and
    ``CUDAExecutionProvider`` (case is ignored, the ``ExecutionProvider`` suffix optional).
    """
    if not isinstance(provider, str) or not provider:
        raise MobileNetError(f"an execution provider name is needed, got {provider!r}")
    available = available_providers()
    wanted = short_provider_name(provider).lower()
    for name in available:
        if short_provider_name(name).lower() == wanted:
            return name
    hint = ""
    if wanted == "openvino":
        hint = " (OpenVINO runs natively: mobilenets export --format openvino)"
    raise MobileNetError(
        f"onnxruntime execution provider {provider!r} is not available here{hint}; "
        f"available: {', '.join(available)}"
    )


def create_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    provider: str = DEFAULT_PROVIDER,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session with every graph optimization on (fusions, NCHWc layouts).

    ``threads`` sets the intra-op pool (the one convolutions use); inter-op parallelism stays
    at one thread because a MobileNet is a chain, with nothing to run side by side. The pool's
    threads spin between operators but stop when ``run`` returns: left spinning, they held a
    core long after the call and slowed whatever ran next on this 2-core machine by up to 2x
    (PyTorch 9.4 -> 18 ms, measured), at no cost to onnxruntime's own latency (3.38 -> 3.44 ms).
    ``profile_prefix`` turns on onnxruntime's profiler (per-node kernel times, a JSON file
    under that prefix once ``end_profiling`` is called), for the latency model's calibration.
    """
    provider = check_provider(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no warnings on stderr of the CLI
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        session = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # onnxruntime raises its own types, all direct Exception subclasses
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MobileNetError(f"onnxruntime cannot load {path}: {first_line}") from None
    if provider not in session.get_providers():  # onnxruntime falls back to CPU in silence
        raise MobileNetError(
            f"onnxruntime did not give {path} to {provider}; it runs on "
            f"{', '.join(session.get_providers())}"
        )
    return session


def input_resolution(session: ort.InferenceSession) -> tuple[int, int, int]:
    """The (C, H, W) an exported model takes; the batch axis is dynamic."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise MobileNetError(f"expected an image model with input (N, C, H, W), got {shape}")
    return tuple(shape[1:])  # type: ignore[return-value]


def run_session(session: ort.InferenceSession, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Logits for one batch of preprocessed images, in any array layout and float dtype."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(array, dtype=np.float32)})[0]


def top1_accuracy(session: ort.InferenceSession, dataset: Dataset, batch_size: int = 64) -> float:
    """Fraction of ``dataset`` whose highest logit is the label."""
    correct = total = 0
    for images, labels in batches(dataset, batch_size):
        predicted = run_session(session, images).argmax(axis=1)
        correct += int((predicted == labels.numpy()).sum())
        total += len(labels)
    return correct / max(total, 1)
