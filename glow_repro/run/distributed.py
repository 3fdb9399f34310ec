"""Data-parallel context for one run across processes (README, "Bigger machines").

``torchrun`` (or the SLURM launcher) sets ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``; then
:func:`from_environment` joins the process group (``gloo`` on the CPU, ``nccl`` on CUDA, on
this rank's own GPU) and every helper here reduces across ranks. In a plain single process
every helper is the identity, so the training loop has one code path.
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

    def device(self, device_type: str) -> torch.device:
        """This process's device: the CPU, or its own GPU. A rank takes GPU ``local_rank`` when
        it sees the node's GPUs and GPU 0 when the scheduler shows each task only its own;
        a single process keeps the current GPU (the one its launcher chose)."""
        if device_type != "cuda":
            return torch.device(device_type)
        if not self.enabled:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda", self.local_rank if torch.cuda.device_count() > 1 else 0)

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a tensor on this rank's device, left on the device (no host read)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

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
    """Join the process group that torchrun (or submitit) describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    context = DistContext(
        rank=int(os.environ.get("RANK", "0")), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        if device_type == "cuda":  # NCCL binds the group to the device current at its start
            device = context.device(device_type)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return context


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
