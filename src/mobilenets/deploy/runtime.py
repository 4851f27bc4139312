"""onnxruntime sessions, ONNX files and the run description they carry.

An exported file must be usable on its own, away from the run directory it came from: its
``metadata_props`` hold the class names and the preprocessing (mean, std, input size) as plain
JSON values any consumer can read, and the whole run description under ``mobilenets.run`` so
that quantization can rebuild the training data for calibration and evaluation.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch.utils.data import DataLoader, Dataset

from mobilenets.checkpoint import RunInfo
from mobilenets.errors import MobileNetError

DEFAULT_PROVIDER = "CPUExecutionProvider"
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"
OPENVINO_REGISTRATION = "mobilenets-openvino"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RUN_KEY = "mobilenets.run"
PRECISION_KEY = "mobilenets.precision"


# --------------------------------------------------------------------------- metadata


def onnx_metadata(info: RunInfo, precision: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: readable keys plus the full description.

    ``crop_pct`` completes the preprocessing: resize the shorter side to
    ``input_size / crop_pct``, centre-crop ``input_size``, normalise with ``mean`` and ``std``.
    """
    recorded = info.extra.get("data", {}) or {}
    return {
        "class_names": json.dumps(list(info.class_names)),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": json.dumps(list(info.input_size)),
        "crop_pct": json.dumps(float(recorded.get("crop_pct", 1.0))),
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
    props = metadata(model)
    if RUN_KEY not in props:
        raise MobileNetError(
            f"{source} has no mobilenets metadata (class names, preprocessing); "
            "export it with `mobilenets export`"
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
    """The execution providers a session can use here: onnxruntime's own, plus OpenVINO when
    its plugin package (``pip install "mobilenets[openvino]"``) is installed."""
    providers = list(ort.get_available_providers())
    if OPENVINO_PROVIDER not in providers and _openvino_plugin() is not None:
        providers.append(OPENVINO_PROVIDER)
    return providers


def short_provider_name(provider: str) -> str:
    """``OpenVINOExecutionProvider`` -> ``OpenVINO``: the name users type and tables show."""
    return provider.removesuffix("ExecutionProvider")


def check_provider(provider: str) -> str:
    """The full name of ``provider`` if this machine has it, else a one-line error.

    Short names are accepted: ``cpu`` and ``openvino`` stand for ``CPUExecutionProvider`` and
    ``OpenVINOExecutionProvider`` (case is ignored, the ``ExecutionProvider`` suffix optional).
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
        hint = ' (install it with pip install "mobilenets[openvino]")'
    raise MobileNetError(
        f"onnxruntime execution provider {provider!r} is not available here{hint}; "
        f"available: {', '.join(available)}"
    )


@functools.cache
def _openvino_plugin() -> ort.OrtEpDevice | None:
    """OpenVINO's CPU device, its plugin library registered with onnxruntime (once per process).

    OpenVINO ships for onnxruntime as a plugin execution provider: a separate wheel holding
    the provider and the OpenVINO runtime, loaded here only when someone asks for it.
    """
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return None
    if not hasattr(ort, "register_execution_provider_library"):  # onnxruntime < 1.23
        return None
    try:
        ort.register_execution_provider_library(OPENVINO_REGISTRATION, plugin.get_library_path())
    except Exception:  # already registered by the caller, under our name
        pass
    devices = [
        d
        for d in ort.get_ep_devices()
        if d.ep_name == plugin.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"
    ]
    return devices[0] if devices else None


def _openvino_options(threads: int | None) -> dict[str, str]:
    """OpenVINO's CPU settings for a session: fp32 arithmetic, tuned for latency.

    Asked for nothing, OpenVINO picks a lower inference precision on CPUs that have bf16 or
    fp16 instructions (this one has both): 1.5x slower here (4.8 vs 3.2 ms, MobileNetV2 at
    224) and no longer fp32, so the export check would compare the wrong arithmetic.
    """
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return {"load_config": json.dumps({"CPU": config})}


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
    With OpenVINO the whole graph goes to OpenVINO, which runs it on its own threads.
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
    providers: list[str] | None = [provider]
    if provider == OPENVINO_PROVIDER:  # a plugin: chosen by device, not by name
        options.add_provider_for_devices([_openvino_plugin()], _openvino_options(threads))
        providers = None
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
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
    """Logits for one batch of preprocessed images."""
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(array, dtype=np.float32)})[0]


def batches(dataset: Dataset, batch_size: int = 64) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset in order, in batches: evaluation and calibration see the same images."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def top1_accuracy(session: ort.InferenceSession, dataset: Dataset, batch_size: int = 64) -> float:
    """Fraction of ``dataset`` whose highest logit is the label."""
    correct = total = 0
    for images, labels in batches(dataset, batch_size):
        predicted = run_session(session, images).argmax(axis=1)
        correct += int((predicted == labels.numpy()).sum())
        total += len(labels)
    return correct / max(total, 1)
