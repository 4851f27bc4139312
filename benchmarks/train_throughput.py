"""Training throughput: our MobileNetV2 against the same network built from plain torch.nn
layers, at 32x32, batch 64, 2 threads, in NCHW and channels_last memory formats.

Run under the shared CPU lock, so no other job skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/train_throughput.py

"Plain" is torchvision's way of writing MobileNetV2: ``nn.Sequential`` of ``nn.Conv2d`` /
``nn.BatchNorm2d`` / ``nn.ReLU6``, a small module for the residual, built from the paper's
(t, c, n, s) table written out here again, independently of ours. Before timing, the plain
network is loaded with our weights and must give the same logits, so both sides compute the
same function. A step is forward, label-smoothed cross-entropy, backward and an SGD update,
as in ``mobilenets train``. Engines are timed in interleaved rounds
(mobilenets.deploy.bench.measure),
so load changes during the run hit all of them alike.

The last rows time the default training configurations (width 0.5) in both formats: they are
what decides ``TrainConfig.channels_last``. Writes benchmarks/results/train_throughput.md.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.bench import measure, summarize, torch_threads
from mobilenets.models import create_model

from stamp import write_results

RESULTS = Path(__file__).parent / "results" / "train_throughput.md"
THREADS, BATCH, RESOLUTION, CLASSES = 2, 64, 32, 10
# torchvision's inverted_residual_setting: t, c, n, s.
PLAIN_SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                  [6, 160, 3, 2], [6, 320, 1, 1]]  # fmt: skip


def conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class PlainInvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = c_in * t
        layers = [] if t == 1 else [conv_bn_relu6(c_in, hidden, 1, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def plain_mobilenet_v2(num_classes: int) -> nn.Sequential:
    """Width 1.0 with the 32 px adaptation (stride 1 in the stem and the first s=2 stage)."""
    layers, c_in, relax = [conv_bn_relu6(3, 32, 3, 1)], 32, True
    for t, c, n, s in PLAIN_SETTINGS:
        if s == 2 and relax:
            s, relax = 1, False
        for i in range(n):
            layers.append(PlainInvertedResidual(c_in, c, s if i == 0 else 1, t))
            c_in = c
    layers.append(conv_bn_relu6(c_in, 1280, 1, 1))
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers, *head)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Load ``source``'s tensors into ``target`` by position: same layers, same order."""
    src, dst = source.state_dict(), target.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    target.load_state_dict(dict(zip(dst, src.values(), strict=True)))


def train_step(model: nn.Module, channels_last: bool) -> Callable[[], None]:
    """One SGD step on a fixed random batch, in the given memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    images = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION).to(memory_format=fmt)
    labels = torch.randint(0, CLASSES, (BATCH,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> int:
    torch.manual_seed(0)
    ours = create_model("mobilenet_v2", num_classes=CLASSES, small_input=True)
    plain = plain_mobilenet_v2(CLASSES)
    copy_weights(ours, plain)
    x = torch.randn(4, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        same = torch.allclose(ours.eval()(x), plain.eval()(x), atol=1e-4)
    assert same, "the plain network does not compute the same function"

    engines: dict[str, Callable[[], None]] = {}
    for channels_last in (False, True):
        fmt = "channels_last" if channels_last else "NCHW"
        torch.manual_seed(0)
        ours = create_model("mobilenet_v2", num_classes=CLASSES, small_input=True)
        plain = plain_mobilenet_v2(CLASSES)
        copy_weights(ours, plain)
        engines[f"V2 1.0, ours, {fmt}"] = train_step(ours, channels_last)
        engines[f"V2 1.0, plain nn, {fmt}"] = train_step(plain, channels_last)
    for arch in ("mobilenet_v2", "mobilenet_v1"):
        for channels_last in (False, True):
            fmt = "channels_last" if channels_last else "NCHW"
            model = create_model(arch, num_classes=CLASSES, width_mult=0.5, small_input=True)
            engines[f"{arch[-2:].upper()} 0.5, ours, {fmt}"] = train_step(model, channels_last)

    print(f"timing {len(engines)} engines, {THREADS} threads, batch {BATCH} at {RESOLUTION}px")
    with torch_threads(THREADS):
        seconds = measure(engines, warmup=3, iterations=15, rounds=5)
    timings = {name: summarize(name, s, BATCH, None) for name, s in seconds.items()}

    rows = []
    for name, t in timings.items():
        ips = t.images_per_s
        rows.append(f"| {name} | {t.median_ms:.0f} | {t.p90_ms:.0f} | {ips:.0f} |")
        print(f"{name:<34} {t.median_ms:7.0f} ms/step  {ips:6.0f} images/s")
    ips = {name: t.images_per_s for name, t in timings.items()}
    ratios = [
        ("ours / plain, NCHW", ips["V2 1.0, ours, NCHW"] / ips["V2 1.0, plain nn, NCHW"]),
        (
            "ours / plain, channels_last",
            ips["V2 1.0, ours, channels_last"] / ips["V2 1.0, plain nn, channels_last"],
        ),
        (
            "ours channels_last / ours NCHW (V2 1.0)",
            ips["V2 1.0, ours, channels_last"] / ips["V2 1.0, ours, NCHW"],
        ),
        (
            "ours channels_last / plain NCHW (V2 1.0)",
            ips["V2 1.0, ours, channels_last"] / ips["V2 1.0, plain nn, NCHW"],
        ),
        *[
            (
                f"channels_last / NCHW ({v} 0.5)",
                ips[f"{v} 0.5, ours, channels_last"] / ips[f"{v} 0.5, ours, NCHW"],
            )
            for v in ("V2", "V1")
        ],
    ]
    for label, r in ratios:
        print(f"{label:<42} {r:.2f}x")

    text = "\n".join(
        [
            "# Training throughput: ours vs plain torch.nn MobileNetV2",
            "",
            f"Training steps (forward, cross-entropy, backward, SGD) at {RESOLUTION}x{RESOLUTION}, "
            f"batch {BATCH}, {THREADS} threads, 10 classes, total stride 8; median of "
            f"{next(iter(timings.values())).iterations} steps in 5 interleaved rounds. "
            f"torch {torch.__version__}, {platform.machine()}, Python {sys.version.split()[0]}. "
            "Produced by `benchmarks/train_throughput.py`.",
            "",
            "| network, memory format | ms/step (median) | ms/step (p90) | images/s |",
            "|---|---|---|---|",
            *rows,
            "",
            "| ratio (images/s) | |",
            "|---|---|",
            *[f"| {label} | {r:.2f}x |" for label, r in ratios],
            "",
        ]
    )
    write_results(RESULTS, text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
