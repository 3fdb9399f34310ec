"""What a launcher is given and what it gives back: one run to train, and how that ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glow_repro.core.config import RunConfig
from glow_repro.run.rundir import RunState

TrainFn = Callable[..., dict]


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs to train one run (picklable)."""

    run_id: str
    variant: str
    seed: int
    config: RunConfig
    run_dir: str
    threads: int | None = None
    train_fn: TrainFn | None = None
    gpu: int | None = None  # the GPU this run trains on when the node has several (local launcher)


@dataclass(frozen=True)
class Outcome:
    run_id: str
    state: RunState
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
