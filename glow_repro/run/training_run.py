"""One run in progress: :class:`TrainingRun`, which the loop of :mod:`glow_repro.run.train` steps
and its hooks (:mod:`glow_repro.run.hooks`) act on.

It holds the run's parts (the engine, the batch order and the stream of batches, the
stability monitor and the recovery policy, the step budget and the learning-rate schedule)
and does what both the start of a run and its hooks need: a step, an evaluation, a
checkpoint saved or loaded, rows written to the run's logs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from glow_repro.core.batches import BatchOrder, BatchStream, epoch_order, step_generator
from glow_repro.core.config import RunConfig
from glow_repro.core.data import ImageData
from glow_repro.core.objective import preprocess
from glow_repro.core.objectives import Batch, EvalSet
from glow_repro.errors import UserFacingWarning
from glow_repro.run.cadence import CheckpointTimer
from glow_repro.run.checkpoint import REMEDY, Checkpoint
from glow_repro.run.distributed import DistContext
from glow_repro.run.engine import Engine
from glow_repro.run.rundir import JsonlLog, RunDir, RunState, UnreadableFileError
from glow_repro.run.stability import RecoveryPolicy, StabilityMonitor


def learning_rate(base_lr: float, warmup_steps: int, step: int) -> float:
    """Linear warmup from lr/warmup to lr over ``warmup_steps`` (Glow, section 5), then constant."""
    return base_lr * (min(1.0, step / warmup_steps) if warmup_steps else 1.0)


@dataclass(frozen=True)
class StepOutcome:
    """One step as the hooks see it: its metrics row (timing not yet added), its batch, the
    kind of fault the engine met (None for a good step, whose update was kept) and its wall
    seconds."""

    row: dict[str, Any]
    batch: Batch
    fault: str | None
    seconds: float


class TrainingRun:
    """The run in ``run_dir`` while it trains; ``step`` is the last step taken. A hook that
    ends the run before its budget (a divergence) sets ``ended``."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: RunDir,
        device: torch.device,
        train_data: ImageData,
        test_data: ImageData,
        dist: DistContext,
    ):
        self.config, self.run_dir, self.device, self.dist = config, run_dir, device, dist
        self.train_data, self.test_data = train_data, test_data
        self.engine = Engine(config, device, dist)
        self.objective = self.engine.objective
        self.batch_order = BatchOrder(train_data, config.train.batch_size, config.seed)
        self.batch_stream = BatchStream(
            config,
            train_data,
            self.batch_order,
            device,
            self.engine.memory_format,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        cfg = config.train
        # budgets given in epochs become steps of this training set (drop-last batches)
        per_epoch = self.batch_order.per_epoch
        self.total_steps = cfg.budget_steps(per_epoch)
        self.warmup_steps = cfg.warmup_steps if cfg.warmup_epochs is None else round(cfg.warmup_epochs * per_epoch)
        self.monitor = StabilityMonitor(config.monitor, self.engine.model, run_dir.path.name)
        self.recovery = RecoveryPolicy(cfg)  # its counters survive a rollback, saved in checkpoints
        self.checkpoint_timer = CheckpointTimer(cfg.checkpoint_every_minutes)
        #: Called with each log and the rows just appended to it (a mirror of the logs).
        self.listeners: list[Callable[[JsonlLog, list[dict]], None]] = []
        self.ended: RunState | None = None
        self.step = 0
        self.elapsed_before = 0.0
        self.clock = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Wall seconds spent on this run, summed over every resume."""
        return self.elapsed_before + time.perf_counter() - self.clock

    @property
    def logs(self) -> tuple[JsonlLog, JsonlLog, JsonlLog]:
        return self.run_dir.metrics, self.run_dir.evals, self.run_dir.events

    def write(self, log: JsonlLog, rows: list[dict]) -> None:
        """Append ``rows`` to ``log`` (rank 0 only) and pass them to the listeners."""
        if self.dist.is_main and rows:
            log.extend(rows)
            for listener in self.listeners:
                listener(log, rows)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.checkpoint_timer.restart()
        if not self.dist.is_main:
            return
        checkpoint = Checkpoint(
            step=self.step,
            elapsed=self.elapsed,
            counters=self.recovery.counters(),
            weights=self.engine.state_dict(),
            torch_rng=torch.get_rng_state(),
            monitor=self.monitor.state_dict(),
        )
        for log in self.logs:
            log.sync()
        checkpoint.write(self.run_dir.checkpoint)

    def load_checkpoint(self, *, rollback: bool = False, checkpoint: Checkpoint | None = None) -> list[str]:
        """Resume (everything, logs cut back to the checkpoint) or roll back (model and
        optimiser only: the counters, the monitor and the event log keep what happened
        since); ``checkpoint`` is the run's when it was read already. Returns the names of
        the logs whose torn last line was dropped."""
        checkpoint = checkpoint or Checkpoint.read(self.run_dir.checkpoint)
        try:
            self.engine.load_state_dict(checkpoint.weights)
        except (RuntimeError, KeyError, ValueError) as err:
            raise UnreadableFileError(
                f"{self.run_dir.checkpoint}: does not fit this run's model ({str(err).splitlines()[0][:160]}); {REMEDY}"
            ) from None
        torch.set_rng_state(checkpoint.torch_rng)
        self.step = checkpoint.step
        logs = self.logs[:2] if rollback else self.logs
        self.dist.barrier()  # every rank has read the checkpoint before the main one cuts logs
        torn = [log.path.name for log in (logs if self.dist.is_main else ()) if log.truncate_after(self.step)]
        if not rollback:
            self.elapsed_before, self.clock = checkpoint.elapsed, time.perf_counter()
            self.recovery.load_counters(checkpoint.counters)
            self.monitor.load_state_dict(checkpoint.monitor)
        return torn

    def record_repairs(self, repairs: list[str]) -> None:
        """One ``repair`` event per repair made on resume, at the step training goes on from,
        and a warning for each."""
        for detail in repairs:
            warnings.warn(
                f"{self.run_dir.path}: {detail} (recorded as a repair event)", UserFacingWarning, stacklevel=2
            )
        events = [{**self.monitor.event(self.step, "repair", None), "detail": detail} for detail in repairs]
        self.write(self.run_dir.events, events)

    # -- what the loop and its hooks do --------------------------------------------------------
    def initialise_actnorm(self) -> None:
        """Data-dependent init of every ActNorm from ``init_images`` training images (3.1)."""
        count = min(self.config.train.init_images, len(self.train_data.images))
        order = epoch_order(len(self.train_data.images), self.config.seed, epoch=-1)
        self.engine.initialise(
            preprocess(
                self.train_data.images[order[:count]],
                self.config.data.n_bits,
                generator=step_generator(self.config.seed, 0, stream=2),
            )
        )

    def evaluate(self) -> None:
        """Append the objective's test metrics at this step to ``evals.jsonl``."""
        cfg, dist = self.config.train, self.dist
        images = self.test_data.images[: cfg.eval_limit]
        data = EvalSet(images, self.test_data.labels, cfg.eval_batch_size, self.device, dist.rank, dist.world_size)
        sums = self.objective.eval_sums(self.engine.eval_model, data)
        means = [value / len(images) for value in dist.sum(sums, self.device)]
        bpd, *others = means
        row = {
            "step": self.step,
            "test_bpd": bpd,
            "n_images": len(images),
            "wall_time": self.elapsed,
            "epoch": self.batch_order.epoch(self.step),
            **dict(zip(self.objective.eval_metrics[1:], others, strict=True)),
        }
        self.write(self.run_dir.evals, [row])

    def train_step(self) -> StepOutcome:
        """One optimisation step on batch ``step + 1`` of the seeded order."""
        started = time.perf_counter()
        step = self.step + 1
        lr = learning_rate(self.config.train.lr, self.warmup_steps, step) * self.recovery.lr_scale
        batch = self.batch_stream.take(step, prefetch_next=step < self.total_steps)
        self.monitor.record_health(self.monitor.health_due(step))
        result = self.engine.step(batch.x, lr, self.monitor, batch.y)
        self.step = step
        row = {
            "step": step,
            "epoch": self.batch_order.epoch(step),
            "train_bpd": result.loss,
            "lr": lr,
            "grad_norm": result.grad_norm,
            **result.terms,
        }
        return StepOutcome(row, batch, result.fault, time.perf_counter() - started)
