"""Data-parallel context for one run across processes (README, "Bigger machines").

``torchrun`` (or the SLURM launcher) sets ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``; then
:func:`from_environment` joins the process group (``gloo`` on the CPU, ``nccl`` on CUDA) and
every helper here reduces across ranks. In a plain single process every helper is the
identity, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (equal shares)."""
        return batch.chunk(self.world_size)[self.rank] if self.enabled else batch

    def mean(self, value: float, device: torch.device) -> float:
        """Average of a per-rank number over ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any rank (so all ranks take the same branch)."""
        return self.sum([float(flag)], device)[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_environment(device_type: str) -> DistContext:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
