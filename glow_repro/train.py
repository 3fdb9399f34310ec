"""One training run: ``train(config, run_dir)`` — importable, no CLI.

The model, optimiser and step come from :mod:`glow_repro.engine`, each step's batch from
:mod:`glow_repro.batches`, when to evaluate and checkpoint from :mod:`glow_repro.cadence`,
the handling of a bad step from :class:`glow_repro.stability.RecoveryPolicy`; this module
owns the budgets, the checkpoint, the evaluations and the run directory's records.

Exact resume by construction: everything random in the loop is derived from ``(seed, step)``
(the data order of each epoch, the dequantisation noise and the shift augmentation of each
step) and the learning rate is a pure function of the step, so a checkpoint needs only the
model, optimiser, EMA weights, step, elapsed time, the recovery counters (skips,
rollbacks, lr scale) and the stability monitor's running history to continue bit-exactly,
events included, on the same device and thread count. Logs are append-only; on resume they
are cut back to the checkpoint's step, so no metric row is lost or duplicated.

A run's records are evidence: ``train`` holds the run's lock (a second trainer is refused,
naming the holder), never trains a run whose status cannot be read or that diverged, never
starts over on logs whose checkpoint is gone, and records each repair it makes on resume (a
torn last log line dropped, a stale temporary file removed) as a ``repair`` event.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import math
import signal
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from glow_repro.batches import BatchOrder, BatchStream, epoch_order, step_generator
from glow_repro.cadence import CheckpointTimer, eval_due
from glow_repro.config import (
    RunConfig,
    dump_run_config,
    read_yaml,
    run_identity,
    validate_model,
)
from glow_repro.data import ImageData, load_split
from glow_repro.distributed import DistContext, from_environment, shutdown
from glow_repro.engine import Engine, numerics
from glow_repro.errors import UserFacingError, UserFacingWarning
from glow_repro.evaluation import bpd_sum, class_sums
from glow_repro.image_panels import shown_images
from glow_repro.objective import preprocess
from glow_repro.rundir import (
    JsonlLog,
    RunDir,
    RunLock,
    RunLockedError,
    RunState,
    UnreadableFileError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_torch_file,
)
from glow_repro.runinfo import environment, resolve_device
from glow_repro.sampling import SAMPLES_RECORD, write_samples
from glow_repro.stability import (
    RecoveryPolicy,
    StabilityMonitor,
    locate_nonfinite,
    save_capsule,
)
from glow_repro.tensorboard_log import TensorBoardMirror, require_tensorboard


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; the run saved a checkpoint at a step boundary."""


def learning_rate(base_lr: float, warmup_steps: int, step: int) -> float:
    """Linear warmup from lr/warmup to lr over ``warmup_steps`` (Glow, section 5), then constant."""
    return base_lr * (min(1.0, step / warmup_steps) if warmup_steps else 1.0)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks at step boundaries."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Run:
    """One run in progress, which ``_train`` below drives: the engine, the data order and
    budgets, the checkpoint, evaluations, and forensics and recovery after a bad step."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        device: torch.device,
        train_data: ImageData,
        test_data: ImageData,
        dist: DistContext,
    ):
        self.config, self.run, self.device, self.dist = config, run, device, dist
        self.train_data, self.test_data = train_data, test_data
        self.conditional = config.model.conditioning == "class"
        self.engine = Engine(config, device, dist)
        self.batches = BatchOrder(train_data, config.train.batch_size, config.seed)
        self.stream = BatchStream(
            config,
            train_data,
            self.batches,
            device,
            self.engine.memory_format,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        cfg = config.train
        # budgets given in epochs become steps of this training set (drop-last batches)
        self.total_steps = cfg.budget_steps(self.batches.per_epoch)
        self.warmup_steps = (
            cfg.warmup_steps if cfg.warmup_epochs is None else round(cfg.warmup_epochs * self.batches.per_epoch)
        )
        self.monitor = StabilityMonitor(config.monitor, self.engine.model, run.path.name)
        self.mirror = TensorBoardMirror(run.tensorboard) if cfg.tensorboard and dist.is_main else None
        self.recovery = RecoveryPolicy(cfg)  # its counters survive a rollback, saved in checkpoints
        self.checkpoint_timer = CheckpointTimer(cfg.checkpoint_every_minutes)
        self.step = 0
        self.elapsed_before = 0.0
        self.clock = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Wall seconds spent on this run, summed over every resume."""
        return self.elapsed_before + time.perf_counter() - self.clock

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.checkpoint_timer.restart()
        if not self.dist.is_main:
            return
        weights = self.engine.state_dict()
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "counters": self.recovery.counters(),
            "model": weights["model"],
            "optimizer": weights["optimizer"],
            "ema": weights["ema"],
            "torch_rng": torch.get_rng_state(),
            "monitor": self.monitor.state_dict(),
        }
        for log in (self.run.metrics, self.run.evals, self.run.events):
            log.sync()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.run.checkpoint, buffer.getvalue())

    def load_checkpoint(self, *, rollback: bool = False, state: dict | None = None) -> list[str]:
        """Resume (everything, logs cut back to the checkpoint) or roll back (model and
        optimiser only: the counters, the monitor and the event log keep what happened
        since); ``state`` is the checkpoint when it was read already. Returns the names of
        the logs whose torn last line was dropped."""
        state = state or read_checkpoint(self.run)
        try:
            self.engine.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise UnreadableFileError(
                f"{self.run.checkpoint}: does not fit this run's model "
                f"({str(err).splitlines()[0][:160]}); {CHECKPOINT_REMEDY}"
            ) from None
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        logs = (self.run.metrics, self.run.evals) if rollback else (self.run.metrics, self.run.evals, self.run.events)
        self.dist.barrier()  # every rank has read the checkpoint before the main one cuts logs
        torn = [log.path.name for log in (logs if self.dist.is_main else ()) if log.truncate_after(self.step)]
        if not rollback:
            self.elapsed_before, self.clock = state["elapsed"], time.perf_counter()
            self.recovery.load_counters(state["counters"])
            self.monitor.load_state_dict(state.get("monitor"))
        return torn

    def record_repairs(self, repairs: list[str]) -> None:
        """One ``repair`` event per repair made on resume, at the step training goes on from,
        and a warning for each."""
        for detail in repairs:
            warnings.warn(f"{self.run.path}: {detail} (recorded as a repair event)", UserFacingWarning, stacklevel=2)
        self.write(
            self.run.events, [{**self.monitor.event(self.step, "repair", None), "detail": detail} for detail in repairs]
        )

    # -- pieces of the loop ---------------------------------------------------------------------
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

    def write(self, log: JsonlLog, rows: list[dict]) -> None:
        if self.dist.is_main and rows:
            log.extend(rows)
            if self.mirror is not None:
                self.mirror.rows(log.path.stem, rows)

    def evaluate(self) -> float:
        images = self.test_data.images[: self.config.train.eval_limit]
        where = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        if self.conditional:  # bpd given the label (the official test bits_x), marginal bpd, accuracy
            sums = class_sums(
                self.engine.eval_model,
                images,
                self.test_data.labels,
                self.config.data.n_bits,
                self.config.train.eval_batch_size,
                self.device,
                **where,
            )
            bpd, marginal, accuracy = (value / len(images) for value in self.dist.sum(sums, self.device))
            extra = {"test_bpd_marginal": marginal, "test_accuracy": accuracy}
        else:
            total = bpd_sum(
                self.engine.eval_model,
                images,
                self.config.data.n_bits,
                self.config.train.eval_batch_size,
                self.device,
                **where,
            )
            bpd, extra = self.dist.sum([total], self.device)[0] / len(images), {}
        self.write(
            self.run.evals,
            [
                {
                    "step": self.step,
                    "test_bpd": bpd,
                    "n_images": len(images),
                    "wall_time": self.elapsed,
                    "epoch": self.batches.epoch(self.step),
                    **extra,
                }
            ],
        )
        return bpd

    def train_step(self) -> tuple[dict, tuple[torch.Tensor, torch.Tensor | None], str | None]:
        """One optimisation step on batch ``step + 1`` of the seeded order; returns its log
        row, its batch (inputs and, for a class-conditional run, labels) and the kind of fault
        the engine met (its update then not kept)."""
        cfg = self.config
        step = self.step + 1
        lr = learning_rate(cfg.train.lr, self.warmup_steps, step) * self.recovery.lr_scale
        x, y = self.stream.take(step, prefetch_next=step < self.total_steps)
        self.monitor.record_scales(self.monitor.health_due(step))
        result = self.engine.step(x, lr, self.monitor, y)
        self.step = step
        row = {
            "step": step,
            "epoch": self.batches.epoch(step),
            "train_bpd": result.loss,
            "lr": lr,
            "grad_norm": result.grad_norm,
        }
        if result.class_bits is not None:
            row["train_class_bits"] = result.class_bits
        return row, (x, y), result.fault

    def recover(self, kind: str, row: dict, batch: tuple[torch.Tensor, torch.Tensor | None]) -> bool:
        """Record a non-finite (or exploded, > ``monitor.max_bpd``) step with the layer it
        started in, then apply ``train.on_nonfinite``; returns True when the run has diverged."""
        step, lr = self.step, row["lr"]
        model = self.engine.model
        images, labels = batch
        finding = locate_nonfinite(
            model,
            images,
            self.config.data.n_bits,
            self.config.train.precision,
            labels=labels,
            class_weight=self.config.model.class_weight,
        )
        if self.recovery.first_nonfinite is None and self.dist.is_main:
            save_capsule(
                self.run.capsules / f"step_{step:07d}.pt",
                config=self.config,
                model=model,
                batch=images,
                step=step,
                lr=lr,
                finding=finding,
                labels=labels,
            )
        response = self.recovery.respond(kind, step)
        value = row["grad_norm"] if kind == "nonfinite_gradient" else row["train_bpd"]
        events = [{**self.monitor.event(step, kind, value, layer=finding.layer, lr=lr), "phase": finding.phase}]
        if response.action == "rollback" and not response.gave_up:
            self.load_checkpoint(rollback=True)
            factor = self.config.train.rollback_lr_factor
            events.append(self.monitor.event(step, "rollback", self.step, lr=lr * factor))
        if response.gave_up:
            events.append(self.monitor.event(step, "gave_up", self.recovery.skipped + self.recovery.rollbacks, lr=lr))
        self.write(self.run.events, events)
        return response.diverged


#: What to do about a checkpoint that cannot be used.
CHECKPOINT_REMEDY = (
    "restore it from a backup, or move the run directory away and train the run again from the start "
    "(a study's `glow-repro run` then trains it in a new one)"
)


def read_checkpoint(run: RunDir) -> dict:
    """The run's checkpoint, read onto the CPU (``torch.set_rng_state`` takes a CPU tensor only;
    the engine moves weights and optimiser state to the run's device), or a one-line
    :class:`UnreadableFileError` when it is damaged."""
    load = functools.partial(torch.load, map_location="cpu", weights_only=False)
    return read_torch_file(
        run.checkpoint,
        load,
        what="checkpoint",
        keys=("step", "elapsed", "counters", "model", "optimizer", "torch_rng"),
        remedy=CHECKPOINT_REMEDY,
    )


def _check_history(run: RunDir) -> None:
    """Refuse to train a run when that would rewrite its history: its status cannot be read,
    it diverged (its logs are the evidence), or its logs go past step 0 while its
    checkpoint is gone (training would start over on them). Reading the logs here also turns
    a damaged log into one line before anything is written."""
    status = run.status()
    state = RunState(status["state"])
    if state is RunState.UNREADABLE:
        raise UnreadableFileError(status["error"])
    if state is RunState.DIVERGED:
        raise UserFacingError(
            f"{run.path}: this run diverged at step {status.get('step')}; its records "
            "are kept as the evidence: train into another --out directory to try again"
        )
    logged = max((row.get("step", 0) for log in (run.metrics, run.evals, run.events) for row in log.read()), default=0)
    if not run.checkpoint.exists() and (state is RunState.DONE or logged > 0):
        what = "this finished run" if state is RunState.DONE else f"this run (logged to step {logged})"
        raise UserFacingError(
            f"{run.path}: {what} has no checkpoint.pt, and training would start over "
            "on its logs; restore checkpoint.pt to go on, or train into another --out "
            "directory"
        )


@contextlib.contextmanager
def _hold_lock(run: RunDir, dist: DistContext, device: torch.device) -> Iterator[None]:
    """Hold the run's lock while training (rank 0 of a data-parallel run), unless a launcher
    of this process already took it for this run; every rank raises when it is taken."""
    lock = RunLock(run.path)
    take = dist.is_main and not lock.held_here()
    refused = take and not lock.acquire()
    if dist.any(refused, device):
        raise RunLockedError(
            f"{run.path}: {lock.holder() if dist.is_main else 'another process'} is "
            "training this run; wait for it to end (or stop it) and run this again"
        )
    try:
        yield
    finally:
        if take:
            lock.release()


def _check_same_run(run: RunDir, config: RunConfig) -> None:
    if not run.config.exists():
        return
    existing = validate_model(RunConfig, read_yaml(run.config), str(run.config))
    if run_identity(existing) != run_identity(config):
        raise UserFacingError(
            f"{run.path} already holds a run with a different config; choose another --out directory or delete that one"
        )


def _summary(work: _Run, state: RunState, reconstruction: dict | None) -> dict:
    rows = work.run.metrics.read()
    rates = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    evals = work.run.evals.read()
    kinds = collections.Counter(event["kind"] for event in work.run.events.read())
    return {
        "state": state,
        "step": work.step,
        "initial_test_bpd": evals[0]["test_bpd"] if evals else None,
        "final_test_bpd": evals[-1]["test_bpd"] if evals else None,
        "best_test_bpd": min((e["test_bpd"] for e in evals if math.isfinite(e["test_bpd"])), default=None),
        "wall_time": work.elapsed,
        "n_params": work.engine.model.n_params(),
        "images_per_s": statistics.median(rates) if rates else None,
        "diverged": state is RunState.DIVERGED,
        "first_nonfinite_step": work.recovery.first_nonfinite,
        "steps_skipped": work.recovery.skipped,
        "rollbacks": work.recovery.rollbacks,
        "events_by_kind": dict(kinds),
        "reconstruction_error": reconstruction["reconstruction_max_abs_error"] if reconstruction else None,
        **(
            {f"final_{key}": evals[-1][key] for key in ("test_bpd_marginal", "test_accuracy")}
            if evals and "test_accuracy" in evals[-1]
            else {}
        ),
    }


def train(config: RunConfig, run_dir: str | Path, *, threads: int | None = None, progress: bool | None = None) -> dict:
    """Run, or resume, one run in ``run_dir``; returns its summary (also in summary.json).

    Status goes ``running`` -> ``done`` | ``diverged`` | ``failed`` (error recorded, exception
    re-raised) | ``interrupted`` (SIGINT/SIGTERM: checkpoint saved, :class:`RunInterrupted`
    raised). A directory that already holds a checkpoint is resumed. Started by ``torchrun``,
    the run is data-parallel over its processes; only rank 0 writes files.
    """
    if config.train.tensorboard:
        require_tensorboard()
    threads = threads or config.train.threads
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(config.train.device)
    train_data = load_split(config.data, "train")
    test_data = load_split(config.data, "test")
    run = RunDir(run_dir)
    _check_same_run(run, config)
    dist = from_environment(device.type)
    device = dist.device(device.type)
    if config.train.batch_size > len(train_data.images):
        raise UserFacingError(
            f"train.batch_size={config.train.batch_size} is more than the {len(train_data.images)} training "
            f"images of {config.data.dataset}; lower train.batch_size or give it more images"
        )
    if config.train.batch_size % dist.world_size:
        raise UserFacingError(
            f"train.batch_size={config.train.batch_size} is not divisible by "
            f"the {dist.world_size} data-parallel processes"
        )
    try:
        with _hold_lock(run, dist, device):
            _check_history(run)
            checkpoint = read_checkpoint(run) if run.checkpoint.exists() else None
            removed = []
            if dist.is_main:
                removed = run.remove_stale_temporaries()
                run.samples.mkdir(exist_ok=True)
                if not run.config.exists():
                    atomic_write_text(run.config, dump_run_config(config))
                atomic_write_json(run.environment, {**environment(device), "world_size": dist.world_size})
                run.write_status(RunState.RUNNING, step=0 if checkpoint is None else checkpoint["step"])
            dist.barrier()
            try:
                with numerics(config.train):
                    return _train(config, run, device, train_data, test_data, progress, dist, checkpoint, removed)
            except RunInterrupted:
                raise
            except Exception as err:
                if dist.is_main:
                    run.error_file.write_text(traceback.format_exc())
                    run.write_status(
                        RunState.FAILED, step=run.status().get("step", 0), error=f"{type(err).__name__}: {err}"
                    )
                raise
    finally:
        shutdown(dist)


def _train(
    config: RunConfig,
    run: RunDir,
    device: torch.device,
    train_data: ImageData,
    test_data: ImageData,
    progress: bool | None,
    dist: DistContext,
    checkpoint: dict | None,
    removed: list[str],
) -> dict:
    work = _Run(config, run, device, train_data, test_data, dist)
    cfg = config.train
    if checkpoint is not None:
        torn = work.load_checkpoint(state=checkpoint)
    else:  # a new run, or one killed before its first checkpoint: only step-0 rows go
        torn = [
            log.path.name for log in (run.metrics, run.evals, run.events) if dist.is_main and log.truncate_after(-1)
        ]
        work.initialise_actnorm()
        work.evaluate()
        work.save_checkpoint()
    work.record_repairs(
        [f"dropped the torn last line of {name}" for name in torn]
        + [f"removed {path}, left by a kill during an atomic write" for path in removed]
    )
    work.engine.wrap()
    show = (cfg.progress if progress is None else progress) and sys.stderr.isatty() and dist.is_main
    bar = tqdm(
        total=work.total_steps,
        initial=work.step,
        disable=not show,
        desc=run.path.name,
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )
    state: RunState = RunState.DONE
    with _stop_on_signals() as signals, bar, work.stream:
        while work.step < work.total_steps:
            started = time.perf_counter()
            row, batch, bad = work.train_step()
            seconds = time.perf_counter() - started
            if bad is None:
                work.write(run.events, work.monitor.observe(work.step, row["train_bpd"], row["grad_norm"], row["lr"]))
            if work.step % cfg.log_every == 0 or bad:
                work.write(
                    run.metrics,
                    [
                        {
                            **row,
                            "step_time": seconds,
                            "wall_time": work.elapsed,
                            "images_per_s": work.batches.batch_size / seconds,
                        }
                    ],
                )
            if bad:
                if work.recover(bad, row, batch):
                    state = RunState.DIVERGED
                    break
                bar.n = work.step
                continue
            if eval_due(work.step, cfg, work.batches.per_epoch) or work.step == work.total_steps:
                work.evaluate()
            bar.update(work.step - bar.n)
            bar.set_postfix(bpd=f"{row['train_bpd']:.3f}", img_s=f"{work.batches.batch_size / seconds:.0f}")
            if work.step % cfg.checkpoint_every == 0 or work.step == work.total_steps or work.checkpoint_timer.due():
                work.save_checkpoint()
                if dist.is_main:
                    run.write_status(RunState.RUNNING, step=work.step)
            if dist.any(signals["stop"], device):
                work.save_checkpoint()
                if dist.is_main:
                    run.write_status(RunState.INTERRUPTED, step=work.step)
                if work.mirror is not None:
                    work.mirror.close()
                raise RunInterrupted(f"{run.path}: interrupted at step {work.step}")
    summary: dict | None = None
    if dist.is_main:
        reconstruction = None
        if state is RunState.DONE:  # a diverged run keeps its last good checkpoint
            reconstruction = write_samples(
                work.engine.eval_model, config, run.samples, test_data.images, pairs=0, record=SAMPLES_RECORD
            )
            work.save_checkpoint()
        if work.mirror is not None:
            work.mirror.images(shown_images(run.samples), work.step)
            work.mirror.close()
        summary = _summary(work, state, reconstruction)
        atomic_write_json(run.summary_file, summary)
        run.write_status(state, step=work.step)
    dist.barrier()  # rank 0 has written summary.json: every rank returns the same summary
    return summary or run.summary()
