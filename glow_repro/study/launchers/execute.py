"""One run as every launcher trains it: under its lock, through ``train``, into an :class:`Outcome`.

A run's error never escapes: it is written to the run's status and returned, so one failing
run never stops the others. The signal state here is a local worker's (module docstring of
:mod:`glow_repro.study.launchers.local`); in any other process it stays untouched.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from glow_repro.errors import UserFacingError
from glow_repro.run.rundir import RunDir, RunLock, RunState
from glow_repro.study.launchers.tasks import Outcome, RunTask, TrainFn

if TYPE_CHECKING:  # torch stays unimported until a run trains
    import torch

    from glow_repro.run.distributed import DistContext


class _WorkerState:
    signalled = False  # a signal arrived: start no run, raise at most once
    training = False  # inside train(): the first signal raises KeyboardInterrupt there


_worker = _WorkerState()


def interrupt_on_signal(signum: int, frame: Any) -> None:
    """A local worker's SIGINT and SIGTERM: the first one during a run interrupts it (``train``
    installs its own, gentler handler around its step loop); any other is only noted."""
    first = not _worker.signalled
    _worker.signalled = True
    if _worker.training and first:
        raise KeyboardInterrupt


def _default_train() -> TrainFn:
    from glow_repro.run.train import train

    return train


def keep_status(run_dir: RunDir, state: RunState, **fields: Any) -> None:
    """Rewrite status.json with a new state, keeping the fields train wrote (step, ...)."""
    old = {k: v for k, v in run_dir.status().items() if k not in ("state", "updated")}
    run_dir.write_status(state, **{**old, **fields})


def execute_run(task: RunTask, group: DistContext | None = None) -> Outcome:
    """Train one run under its lock and report what happened; never raises for a run's error.

    In a data-parallel ``group`` (a multi-process SLURM job) only rank 0 takes the lock and
    writes a failed status; it decides for every rank whether the run is trained at all.
    """
    if _worker.signalled:
        return Outcome(task.run_id, RunState.CANCELLED)
    main = group is None or group.is_main
    lock = RunLock(task.run_dir)
    run_dir = RunDir(task.run_dir)
    early = None
    if main and not lock.acquire():
        early = Outcome(task.run_id, RunState.ELSEWHERE)
    elif main and run_dir.is_finished():  # another runner finished it after we planned
        lock.release()
        try:
            early = Outcome(task.run_id, run_dir.state(), summary=run_dir.summary())
        except UserFacingError as err:  # a damaged summary.json
            early = Outcome(task.run_id, run_dir.state(), error=str(err))
    stop = early is not None
    if group is not None:  # every rank returns when rank 0 does
        stop = group.any(stop, _group_device(task, group))
    if stop:
        return early or Outcome(task.run_id, RunState.ELSEWHERE)
    started = False
    recorded = run_dir.status()  # to tell train's own `interrupted` from one it found
    try:
        _worker.training = True  # from here a signal interrupts, while torch is imported too
        try:
            train = task.train_fn or _default_train()
            _use_gpu(task.gpu)
            if _worker.signalled:  # arrived before the handler could raise
                raise KeyboardInterrupt
            started = True
            summary = train(task.config, task.run_dir, threads=task.threads, progress=False)
        finally:
            _worker.training = False
        return Outcome(task.run_id, RunState(summary.get("state", run_dir.state())), summary=summary)
    except KeyboardInterrupt:
        if not started:  # stopped before train() began: the run is as it was
            return Outcome(task.run_id, RunState.CANCELLED)
        if run_dir.state() is RunState.RUNNING:
            keep_status(run_dir, RunState.INTERRUPTED)
        return Outcome(task.run_id, RunState.INTERRUPTED)
    except Exception as err:
        state = run_dir.state()
        if state is RunState.INTERRUPTED and run_dir.status() != recorded:  # train turned a signal into its own error
            return Outcome(task.run_id, RunState.INTERRUPTED)
        if state is not RunState.FAILED and main:
            keep_status(
                run_dir,
                RunState.FAILED,
                error=f"{type(err).__name__}: {err}",
                traceback=traceback.format_exc(),
            )
        return Outcome(task.run_id, RunState.FAILED, error=run_dir.status().get("error"))
    finally:
        if main:
            lock.release()


def _group_device(task: RunTask, group: DistContext) -> torch.device:
    """Where this rank's collectives run: its own GPU under nccl, the CPU under gloo."""
    from glow_repro.run.runinfo import resolve_device

    return group.device(resolve_device(task.config.train.device).type)


def _use_gpu(gpu: int | None) -> None:
    """Make ``gpu`` this process's current GPU, where ``train.device`` auto or cuda puts a run."""
    if gpu is not None:
        import torch

        torch.cuda.set_device(gpu)
