"""``mobilenets import`` and ``export-weights``: torchvision and timm checkpoints, both ways."""

from __future__ import annotations

import argparse

from mobilenets.cli._output import console


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn a torchvision or timm checkpoint file into a run directory",
        description=(
            "Read a torchvision (mobilenet_v2, mobilenet_v3_*, efficientnet_b0-b3) or timm "
            "(mobilenetv1/v2/v3_*, efficientnet_b0-b3, efficientnet_lite0, "
            "mobilenetv4_conv_small/medium) state dict (.pth/.pt, read weights-only, or "
            ".safetensors) and write a run directory that predict, evaluate, export and train "
            "--init use. Nothing is downloaded."
        ),
    )
    p.add_argument("file", help="the checkpoint file")
    p.add_argument("--source", required=True, help="the library that wrote it: torchvision or timm")
    p.add_argument("--model", required=True, help="our model name (see `mobilenets models`)")
    p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier of the file")
    p.add_argument("--labels", help="text file with one class name per line")
    p.add_argument("--out", required=True, help="run directory to create (new or empty)")
    p.set_defaults(func=run_import)

    p = subparsers.add_parser(
        "export-weights",
        help="write a run's weights as a torchvision or timm state dict",
        description=(
            "Write a run directory's weights under torchvision's or timm's tensor names, as "
            "a torch.save file (.pth) or .safetensors, for load_state_dict in that library."
        ),
    )
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--to", required=True, help="the library to write for: torchvision or timm")
    p.add_argument("--out", required=True, help="output file (.pth or .safetensors)")
    p.set_defaults(func=run_export_weights)


def run_import(args: argparse.Namespace) -> int:
    from mobilenets.interop.weights import import_checkpoint

    info = import_checkpoint(
        args.file,
        args.source,
        args.model,
        args.out,
        width_mult=args.width_mult,
        labels=args.labels,
    )
    console().print(
        f"imported {args.source} {info.model} width {args.width_mult:g}, "
        f"{len(info.class_names)} classes, from {args.file} into {args.out}"
    )
    return 0


def run_export_weights(args: argparse.Namespace) -> int:
    from mobilenets.interop.weights import export_weights

    state = export_weights(args.run_dir, args.to, args.out)
    console().print(f"wrote {len(state)} tensors with {args.to}'s names to {args.out}")
    return 0
