"""The torchrun process group: which process this is, on which device, and how ranks share.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process joins one
group (gloo on CPU, nccl on GPU); outside it there is one process and no group at all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mobilenets.train.devices import parse_device


@dataclass
class Processes:
    """This process's place among the training processes (one, unless under torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str | None) -> Processes:
        """Join the process group torchrun describes in the environment, if any."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=parse_device(device))
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        target = parse_device(device)
        if target.type == "cuda":
            torch.cuda.set_device(target)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
        return cls(rank=rank, world_size=world_size, device=target)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
