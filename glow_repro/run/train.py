"""One training run: ``train(config, run_dir)`` — importable, no CLI.

This module starts a run (its lock, its history checked, its files, the step-0 evaluation
and checkpoint, or the resume from its checkpoint), steps it in one loop (:func:`run_steps`)
and finishes it (samples, summary, status). The run in progress is a
:class:`glow_repro.run.training_run.TrainingRun`; each concern of the loop (monitor, metrics log,
recovery, evaluation and checkpoint cadence, progress bar, signals, TensorBoard) is a hook of
:mod:`glow_repro.run.hooks`; the checkpoint's format is :mod:`glow_repro.run.checkpoint`'s and what
the run minimises and reports its objective's (:mod:`glow_repro.core.objectives`).

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
import math
import statistics
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch

from glow_repro.core.config import (
    RunConfig,
    dump_run_config,
    read_yaml,
    run_identity,
    validate_model,
)
from glow_repro.core.data import ImageData, load_split
from glow_repro.errors import UserFacingError
from glow_repro.run.checkpoint import Checkpoint
from glow_repro.run.distributed import DistContext, from_environment, shutdown
from glow_repro.run.engine import numerics
from glow_repro.run.hooks import Hook, RunInterrupted, standard_hooks
from glow_repro.run.rundir import (
    RunDir,
    RunLock,
    RunLockedError,
    RunState,
    UnreadableFileError,
    atomic_write_json,
    atomic_write_text,
)
from glow_repro.run.runinfo import environment, resolve_device
from glow_repro.run.sampling import SAMPLES_RECORD, write_samples
from glow_repro.run.tensorboard_log import require_tensorboard
from glow_repro.run.training_run import TrainingRun


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


def _summary(training: TrainingRun, state: RunState, reconstruction: dict | None) -> dict:
    rows = training.run_dir.metrics.read()
    rates = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    evals = training.run_dir.evals.read()
    kinds = collections.Counter(event["kind"] for event in training.run_dir.events.read())
    recovery = training.recovery
    return {
        "state": state,
        "step": training.step,
        "initial_test_bpd": evals[0]["test_bpd"] if evals else None,
        "final_test_bpd": evals[-1]["test_bpd"] if evals else None,
        "best_test_bpd": min((e["test_bpd"] for e in evals if math.isfinite(e["test_bpd"])), default=None),
        "wall_time": training.elapsed,
        "n_params": training.engine.model.n_params(),
        "images_per_s": statistics.median(rates) if rates else None,
        "diverged": state is RunState.DIVERGED,
        "first_nonfinite_step": recovery.first_nonfinite,
        "steps_skipped": recovery.skipped,
        "rollbacks": recovery.rollbacks,
        "events_by_kind": dict(kinds),
        "reconstruction_error": reconstruction["reconstruction_max_abs_error"] if reconstruction else None,
        **({f"final_{key}": evals[-1][key] for key in training.objective.eval_metrics[1:]} if evals else {}),
    }


def _check_batch_size(config: RunConfig, train_data: ImageData, dist: DistContext) -> None:
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


def _write_start(
    run: RunDir, config: RunConfig, dist: DistContext, device: torch.device
) -> tuple[Checkpoint | None, list[str]]:
    """The run's checkpoint if it has one; on rank 0, the run's files as training starts and
    the stale temporary files removed."""
    checkpoint = Checkpoint.read(run.checkpoint) if run.checkpoint.exists() else None
    removed = []
    if dist.is_main:
        removed = run.remove_stale_temporaries()
        run.samples.mkdir(exist_ok=True)
        if not run.config.exists():
            atomic_write_text(run.config, dump_run_config(config))
        atomic_write_json(run.environment, {**environment(device), "world_size": dist.world_size})
        run.write_status(RunState.RUNNING, step=0 if checkpoint is None else checkpoint.step)
    dist.barrier()
    return checkpoint, removed


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
    _check_batch_size(config, train_data, dist)
    try:
        with _hold_lock(run, dist, device):
            _check_history(run)
            checkpoint, removed = _write_start(run, config, dist, device)
            try:
                with numerics(config.train):
                    training = TrainingRun(config, run, device, train_data, test_data, dist)
                    hooks = standard_hooks(training, progress)
                    _start(training, checkpoint, removed)
                    return _finish(training, run_steps(training, hooks), hooks)
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


def _start(training: TrainingRun, checkpoint: Checkpoint | None, removed: list[str]) -> None:
    """Resume from ``checkpoint``, or start: initialise, evaluate and checkpoint at step 0;
    either way record the repairs made (torn log lines dropped, ``removed`` temporaries)."""
    if checkpoint is not None:
        torn = training.load_checkpoint(checkpoint=checkpoint)
    else:  # a new run, or one killed before its first checkpoint: only step-0 rows go
        main = training.dist.is_main
        torn = [log.path.name for log in training.logs if main and log.truncate_after(-1)]
        training.initialise_actnorm()
        training.evaluate()
        training.save_checkpoint()
    training.record_repairs(
        [f"dropped the torn last line of {name}" for name in torn]
        + [f"removed {path}, left by a kill during an atomic write" for path in removed]
    )
    training.engine.wrap()


def run_steps(training: TrainingRun, hooks: list[Hook]) -> RunState:
    """Step ``training`` until its budget is spent or a hook ends it; after each step every
    hook acts, in order (:mod:`glow_repro.run.hooks`). Returns the state the run ended in."""
    with training.batch_stream, contextlib.ExitStack() as entered:
        for hook in hooks:
            entered.enter_context(hook)
        while training.step < training.total_steps and training.ended is None:
            outcome = training.train_step()
            for hook in hooks:
                hook.after_step(training, outcome)
    return training.ended or RunState.DONE


def _finish(training: TrainingRun, state: RunState, hooks: list[Hook]) -> dict:
    """Rank 0 writes the samples and the last checkpoint of a finished run (a diverged one
    keeps its last good checkpoint), then the summary and the final status."""
    run = training.run_dir
    summary: dict | None = None
    if training.dist.is_main:
        reconstruction = None
        if state is RunState.DONE:
            model, config = training.engine.eval_model, training.config
            images = training.test_data.images
            reconstruction = write_samples(model, config, run.samples, images, pairs=0, record=SAMPLES_RECORD)
            training.save_checkpoint()
        for hook in hooks:
            hook.finished(training)
        summary = _summary(training, state, reconstruction)
        atomic_write_json(run.summary_file, summary)
        run.write_status(state, step=training.step)
    training.dist.barrier()  # rank 0 has written summary.json: every rank returns the same summary
    return summary or run.summary()
