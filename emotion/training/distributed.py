"""Process-group helpers for training under ``torchrun`` (NCCL on GPUs, gloo on CPU); one process is world 1.

Every helper is a no-op, or returns its input, when the run has a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils.runtime import pick_device


@dataclass
class Dist:
    """This process's place in the run: its rank, the number of processes and its GPU index on the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    else:
        # Processes share the cores; without this each would start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def all_reduce_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """``values`` summed over every process (float64, so counts stay exact)."""
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def finite_everywhere(value: torch.Tensor, d: Dist, device: torch.device) -> bool:
    """Whether ``value`` is finite on every process (one tiny all-reduce under DDP, so all ranks stop together)."""
    ok = bool(torch.isfinite(value).all())
    if d.world > 1:
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
    return ok
