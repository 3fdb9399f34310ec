"""How many runs train at once under ``glow-repro run --workers auto`` (the default).

On the CPU: the usable cores divided by the threads each run uses (the study's
``train.threads``, else 1), because single-thread runs side by side train more images per
second in total than one run with every thread (benchmarks/README.md, "Workers"); capped by
the runs left and by the memory available, at :data:`MEMORY_PER_RUN` per run. On a CUDA
machine: one run per GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from glow_repro.core.config import RunConfig

#: Memory a CPU run is given when choosing workers: the reference config peaks at about
#: 0.9 GB resident (benchmarks/README.md), so 2 GiB leaves room for larger evaluations.
MEMORY_PER_RUN = 2 * 2**30


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cuda_devices(configs: Sequence[RunConfig]) -> int:
    """GPUs the runs will use: the visible CUDA devices when some run may use CUDA, else 0."""
    if not any(config.train.device in ("auto", "cuda") for config in configs):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(configs: Sequence[RunConfig], *, cores: int, memory: int | None, gpus: int) -> int:
    """Runs to train at once for the runs left (``configs``); see the module docstring."""
    if not configs:
        return 1
    if gpus:
        slots = gpus
    else:
        threads = max(config.train.threads or 1 for config in configs)
        slots = max(1, cores // threads)
        if memory is not None:
            slots = min(slots, max(1, memory // MEMORY_PER_RUN))
    return max(1, min(slots, len(configs)))


def choose_workers(configs: Sequence[RunConfig]) -> int:
    """:func:`auto_workers` on this machine."""
    return auto_workers(configs, cores=usable_cores(), memory=available_memory(), gpus=cuda_devices(configs))
