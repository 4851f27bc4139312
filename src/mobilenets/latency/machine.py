"""Where a calibration belongs: this machine and runtime, its cache file, reading it back.

A calibration is only valid on the machine (CPU model and count) and runtime version that
measured it; :func:`stale_reason` says when a cached one is not.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import onnxruntime as ort

from mobilenets.deploy.runtime import DEFAULT_PROVIDER, short_provider_name
from mobilenets.errors import MobileNetError
from mobilenets.latency.model import (
    CALIBRATION_FORMAT,
    LATENCY_KINDS,
    Calibration,
)

# Runtimes the latency model can be calibrated for: the name users type -> provider. Only
# runtimes whose profiler reports per-kernel times can be calibrated layer by layer.
RUNTIMES = {"onnxruntime": DEFAULT_PROVIDER}
DEFAULT_RUNTIME = "onnxruntime"

CACHE_ENV = "MOBILENETS_CACHE"

# --------------------------------------------------------------------------- the machine


def machine_fingerprint() -> str:
    """What makes timings comparable: the CPU model, the number of CPUs, the architecture."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.machine()}"


def check_runtime(runtime: str) -> str:
    """The provider of ``runtime``, or one line saying which runtimes can be calibrated."""
    if runtime not in RUNTIMES:
        raise MobileNetError(
            f"cannot calibrate for runtime {runtime!r}: the latency model needs per-layer "
            f"kernel times, which these runtimes report: {', '.join(RUNTIMES)}"
        )
    if RUNTIMES[runtime] not in ort.get_available_providers():
        raise MobileNetError(f"{runtime} is not installed here ({RUNTIMES[runtime]} is missing)")
    return RUNTIMES[runtime]


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MobileNetError(f"threads must be 0 (the runtime's default) or more, got {threads!r}")
    return threads


def cache_dir() -> Path:
    """``$MOBILENETS_CACHE``, else ``$XDG_CACHE_HOME/mobilenets``, else ``~/.cache/mobilenets``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mobilenets"


def cache_path(runtime: str = DEFAULT_RUNTIME, threads: int = 0) -> Path:
    provider = short_provider_name(check_runtime(runtime)).lower()
    return cache_dir() / "latency" / f"{runtime}-{provider}-threads{threads}.json"


def stale_reason(calibration: Calibration) -> str | None:
    """Why a cached calibration cannot price this machine and runtime, or ``None``."""
    if calibration.format != CALIBRATION_FORMAT:
        return f"it has format {calibration.format}, this version reads {CALIBRATION_FORMAT}"
    if calibration.machine != machine_fingerprint():
        return f"it was made on another machine ({calibration.machine})"
    if calibration.runtime_version != ort.__version__:
        return (
            f"it was made with {calibration.runtime} {calibration.runtime_version}, "
            f"this is {ort.__version__}"
        )
    missing = set(LATENCY_KINDS) - set(calibration.rooflines)
    if missing:
        return f"it has no rates for {', '.join(sorted(missing))}"
    return None


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MobileNetError(f"cannot read the calibration {path}: {e}") from None
    return Calibration.from_json(data, str(path))
