"""Launchers: how a study's runs get trained.

- ``inprocess``: one run after another in this process (tests, debugging).
- ``local``: up to N worker processes at once, one per run, the CPU threads split among them.
- ``slurm``: a submitit array job; ``submitit-local`` / ``submitit-debug`` run the same code
  path through submitit's local and debug executors (tests, machines without SLURM). With
  ``processes_per_run`` > 1 each job's tasks train their run together with DDP.

Every launcher calls :func:`execute_run` for each task, which takes the run's lock, calls
``train`` and turns whatever happens into an :class:`Outcome`; one failing run never stops
the others. The parent shows one overall progress bar (:class:`Tracker`).

Each local worker is a fresh process (spawn) that trains one run and exits: every run gets
its own thread count, memory is given back, and a worker never outlives the run it was given.
The parent starts and reaps the workers itself, one pipe each, with no executor thread to
hang. Signals (SIGINT from the terminal's Ctrl-C reaches every process of the group; SIGTERM):

- a worker starts with both ignored, installs its own handlers and then says it is ready; a
  signal before ``train`` starts cancels the run untouched; inside it, ``train`` checkpoints
  and writes ``interrupted``, and the worker sends that outcome; any later signal is noted and nothing raised, so a worker
  always exits quietly with status 0. SIGTERM from the parent's death (Linux
  ``PR_SET_PDEATHSIG``) does the same.
- the parent turns both into a count checked between waits, never an exception. The first
  starts no further run, passes SIGINT on to every ready worker (and to one that gets ready
  later) and waits for their outcomes; a second kills the workers at once and marks their runs
  ``interrupted`` (each resumes from its last checkpoint). Once interrupted, the parent keeps
  ignoring both signals: it is on its way out, and a late Ctrl-C must not leave it half-done.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from glow_repro.config import RunConfig
from glow_repro.errors import UserFacingError
from glow_repro.rundir import RunDir, RunLock, RunState
from glow_repro.study.spec import LauncherSpec

if TYPE_CHECKING:  # torch stays unimported until a run trains
    import torch

    from glow_repro.distributed import DistContext

TrainFn = Callable[..., dict]


class LauncherError(UserFacingError):
    """A launcher cannot run here (e.g. no SLURM on this machine)."""


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


@dataclass(frozen=True)
class LaunchOptions:
    folder: Path  # submitit's logs: the study's StudyDir.submitit
    workers: int | None = 1  # None: chosen by glow_repro.study.workers when launched
    slurm: LauncherSpec = LauncherSpec()


class _WorkerState:
    signalled = False  # a signal arrived: start no run, raise at most once
    training = False  # inside train(): the first signal raises KeyboardInterrupt there


_worker = _WorkerState()

#: What a worker sends once its signal handlers are in, before its outcome.
READY = "ready"
#: Seconds a worker has to exit after sending its outcome before it is killed.
EXIT_TIMEOUT = 30.0


def _on_signal(signum: int, frame: Any) -> None:
    """A local worker's SIGINT and SIGTERM: the first one during a run interrupts it (``train``
    installs its own, gentler handler around its step loop); any other is only noted."""
    first = not _worker.signalled
    _worker.signalled = True
    if _worker.training and first:
        raise KeyboardInterrupt


def _worker_main(task: RunTask, conn: Connection, parent_pid: int) -> None:
    """A local worker's life: its signal handlers, dying with the parent, ``ready``, one run and
    its outcome. Signals were ignored from its start until here (:func:`_start_worker`)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    try:
        conn.send(READY)
        outcome = execute_run(task)
        try:
            conn.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as err:  # a summary that cannot go back
            conn.send(Outcome(task.run_id, RunState.FAILED, error=f"{type(err).__name__}: {err}"))
    except OSError:  # the parent is gone; the run's own files say what happened
        pass


def _default_train() -> TrainFn:
    from glow_repro.train import train

    return train


def _keep_status(run_dir: RunDir, state: RunState, **fields: Any) -> None:
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
            _keep_status(run_dir, RunState.INTERRUPTED)
        return Outcome(task.run_id, RunState.INTERRUPTED)
    except Exception as err:
        state = run_dir.state()
        if state is RunState.INTERRUPTED and run_dir.status() != recorded:  # train turned a signal into its own error
            return Outcome(task.run_id, RunState.INTERRUPTED)
        if state is not RunState.FAILED and main:
            _keep_status(
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
    from glow_repro.runinfo import resolve_device

    return group.device(resolve_device(task.config.train.device).type)


def deal_gpus(tasks: Sequence[RunTask]) -> list[RunTask]:
    """Runs that may train on CUDA dealt round-robin to the node's GPUs: the i-th such run
    trains on GPU ``i % device_count``, so a pool of as many workers as GPUs uses them all."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return list(tasks)
    dealt, index = [], 0
    for task in tasks:
        if task.config.train.device == "cpu":
            dealt.append(task)
        else:
            dealt.append(dataclasses.replace(task, gpu=index % count))
            index += 1
    return dealt


def _use_gpu(gpu: int | None) -> None:
    """Make ``gpu`` this process's current GPU, where ``train.device`` auto or cuda puts a run."""
    if gpu is not None:
        import torch

        torch.cuda.set_device(gpu)


def execute_job_run(task: RunTask) -> Outcome:
    """A submitit job's entry point. A job of several tasks (``processes_per_run``) is one
    data-parallel run: its tasks join one process group, as torchrun's processes do, before
    :func:`execute_run`. Task 0's outcome is the job's result."""
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return execute_run(task)
    from glow_repro.distributed import from_environment, shutdown
    from glow_repro.runinfo import resolve_device

    # a task that sees the node's GPUs picks its own by local rank, one shown a single GPU
    # takes it (DistContext.device)
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    group = from_environment(resolve_device(task.config.train.device).type)
    try:
        return execute_run(task, group)
    finally:
        shutdown(group)  # train() leaves the group on its way out; this covers the early returns


class Tracker:
    """The parent's view of a launch: one overall progress bar, a line per finished run."""

    def __init__(self, tasks: Sequence[RunTask], desc: str, slots: int):
        self.tasks = {task.run_id: task for task in tasks}
        self.outcomes: dict[str, Outcome] = {}
        self.interrupted = False
        self.slots = slots
        self.bar = tqdm(total=len(self.tasks), desc=desc, unit="run", dynamic_ncols=True)
        self._refresh()

    def record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.run_id] = outcome
        if outcome.state is not RunState.CANCELLED:
            self.write(self._line(outcome))
        self._refresh(redraw=False)
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()

    def _count(self, counted: Callable[[RunState], bool]) -> int:
        return sum(counted(outcome.state) for outcome in self.outcomes.values())

    def _refresh(self, redraw: bool = True) -> None:
        left = len(self.tasks) - len(self.outcomes)
        self.bar.set_postfix(
            done=self._count(lambda state: state.finished),
            running=0 if self.interrupted else min(self.slots, left),
            failed=self._count(lambda state: state is RunState.FAILED),
            refresh=redraw,
        )

    def _line(self, outcome: Outcome) -> str:
        task = self.tasks[outcome.run_id]
        detail = ""
        if outcome.error:
            detail = f": {outcome.error.splitlines()[0][:160]}"
        elif outcome.state is RunState.DIVERGED:  # its last evaluation may be the untrained step 0
            detail = f": diverged at step {outcome.summary.get('first_nonfinite_step') or outcome.summary.get('step')}"
        elif outcome.summary.get("final_test_bpd") is not None:
            detail = f": test bpd {outcome.summary['final_test_bpd']:.3f}"
        elif outcome.state is RunState.ELSEWHERE:
            detail = ": locked by another process"
        return f"{outcome.state:<11} {task.run_id}  ({task.variant}, seed {task.seed}){detail}"


def launch_inprocess(tasks: Sequence[RunTask], tracker: Tracker, options: LaunchOptions) -> None:
    """Train the runs one after another in this process."""
    try:
        for task in tasks:
            outcome = execute_run(task)
            tracker.record(outcome)
            if outcome.state is RunState.INTERRUPTED:
                tracker.interrupted = True
                return
    except KeyboardInterrupt:
        tracker.interrupted = True


def local_threads(workers: int) -> int:
    """CPU threads per worker: the cores this process may use, split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def launch_local(tasks: Sequence[RunTask], tracker: Tracker, options: LaunchOptions) -> None:
    """Up to ``options.workers`` worker processes at once, one per run; a dead worker fails its
    run, not the study. Signals as in the module docstring."""
    threads = local_threads(options.workers)
    context = multiprocessing.get_context("spawn")
    workers: dict[Connection, _Worker] = {}
    with _ParentSignals() as signals:  # from here: deal_gpus imports torch, which takes a while
        queue = deque(
            task if task.config.train.threads else dataclasses.replace(task, threads=threads)
            for task in deal_gpus(tasks)
        )
        while workers or (queue and not signals.count):
            while queue and not signals.count and len(workers) < options.workers:
                worker = _start_worker(context, queue.popleft(), signals)
                workers[worker.conn] = worker
            answered = wait(list(workers), timeout=0.2)
            if signals.count and not tracker.interrupted:
                tracker.interrupted = True
                tracker.write("interrupted: stopping workers, saving checkpoints ... (Ctrl-C again stops at once)")
                for worker in workers.values():
                    if worker.ready:
                        worker.interrupt()
            if signals.count > 1:
                _stop_at_once(list(workers.values()), tracker)
                return
            for conn in answered:
                worker = workers[conn]
                message = _receive(conn)
                if message == READY:
                    worker.ready = True
                    if tracker.interrupted:
                        worker.interrupt()
                    continue
                del workers[conn]
                outcome = worker.finish(sent=message)
                tracker.record(outcome)
                if outcome.state in (RunState.INTERRUPTED, RunState.CANCELLED):
                    signals.count = max(signals.count, 1)  # a signal the parent missed while starting a worker
        tracker.interrupted = tracker.interrupted or bool(signals.count)


class _ParentSignals:
    """The parent's SIGINT and SIGTERM during a local launch: counted, never raised. After an
    interrupted launch they stay ignored (the module docstring says why)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.previous: dict[int, Any] = {}

    def _count(self, signum: int, frame: Any) -> None:
        self.count += 1

    def __enter__(self) -> _ParentSignals:
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._count)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if self.count else old)

    @contextlib.contextmanager
    def ignored(self) -> Iterator[None]:
        """Ignore both for a moment (:func:`_start_worker`)."""
        for sig in self.previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            yield
        finally:
            for sig in self.previous:
                signal.signal(sig, self._count)


@dataclass
class _Worker:
    """One worker process as the parent sees it: its run, the pipe it answers on, whether its
    signal handlers are in."""

    task: RunTask
    process: Any
    conn: Connection
    ready: bool = False

    def interrupt(self) -> None:
        if self.process.pid is not None:
            try:
                os.kill(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def finish(self, sent: object = None, killed: bool = False) -> Outcome:
        """Reap the process and return the outcome it sent; without one, a run it left
        ``running`` failed, or, when the parent ``killed`` it (a second Ctrl-C), is marked
        ``interrupted`` (it resumes from its last checkpoint, as after any kill)."""
        self.process.join(timeout=EXIT_TIMEOUT)
        if self.process.is_alive():  # it sent its outcome but does not exit
            self.process.kill()
            self.process.join()
        while not isinstance(sent, Outcome) and self.conn.poll():
            sent = _receive(self.conn)
            if sent is None:
                break
        self.conn.close()
        if isinstance(sent, Outcome):
            return sent
        run_dir = RunDir(self.task.run_dir)
        state = run_dir.state()
        if killed:
            if state is RunState.RUNNING:
                _keep_status(run_dir, RunState.INTERRUPTED)
                state = RunState.INTERRUPTED
            return Outcome(self.task.run_id, RunState.CANCELLED if state is RunState.PENDING else state)
        if state is RunState.RUNNING:
            error = "worker process died (killed, or out of memory?)"
            _keep_status(run_dir, RunState.FAILED, error=error)
        else:
            error = f"worker process died at start (exit code {self.process.exitcode})"
        return Outcome(self.task.run_id, RunState.FAILED, error=error)


def _start_worker(context: Any, task: RunTask, signals: _ParentSignals) -> _Worker:
    """Start a worker with SIGINT and SIGTERM ignored (it inherits that through exec), so that a
    Ctrl-C while the interpreter starts gives no traceback; it reports ``ready`` once its own
    handlers are in. A signal to the parent in these few milliseconds is lost, but reaches the
    running workers too, whose interrupted outcomes stop the launch all the same."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_worker_main, args=(task, writer, os.getpid()), name=f"run {task.run_id}")
    try:
        with signals.ignored():
            process.start()
    finally:
        writer.close()
    return _Worker(task, process, reader)


def _receive(conn: Connection) -> object:
    """The next message from a worker, or None once it has died without one."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _stop_at_once(workers: list[_Worker], tracker: Tracker) -> None:
    """A second Ctrl-C: kill the workers; their runs resume from their last checkpoints."""
    if not workers:
        return
    tracker.write("stopping at once: workers killed; each run resumes from its last checkpoint")
    for worker in workers:
        worker.process.kill()
    for worker in workers:
        tracker.record(worker.finish(killed=True))


def launch_submitit(tasks: Sequence[RunTask], tracker: Tracker, options: LaunchOptions, *, cluster: str) -> None:
    """Submit one array job through submitit and wait for it. A job that SLURM kills leaves
    its run resumable (status ``running``); Ctrl-C stops waiting, not the jobs."""
    import submitit

    res = options.slurm
    executor = submitit.AutoExecutor(folder=options.folder / "%j", cluster=cluster)
    params = {
        "name": tracker.bar.desc or "glow-repro",
        "timeout_min": res.timeout_min,
        "gpus_per_node": res.gpus_per_node,
        "tasks_per_node": res.processes_per_run,
        "cpus_per_task": res.cpus_per_task,
        "mem_gb": res.mem_gb,
        "slurm_partition": res.partition,
        "slurm_array_parallelism": res.array_parallelism,
        "slurm_additional_parameters": res.additional or None,
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    threads = res.cpus_per_task
    tasks = [task if task.config.train.threads else dataclasses.replace(task, threads=threads) for task in tasks]
    jobs = executor.map_array(execute_job_run, tasks)
    if jobs:
        tracker.write(f"submitted {len(jobs)} jobs (first id {jobs[0].job_id}); logs in {options.folder}")
    pending = dict(zip(jobs, tasks))
    poll = 15.0 if cluster == "slurm" else 0.2
    try:
        while pending:
            for job in [job for job in pending if job.done()]:
                task = pending.pop(job)
                try:
                    outcome = job.results()[0]  # task 0 speaks for a multi-task job
                except Exception as err:  # the job itself died: timeout, preemption, node failure
                    outcome = Outcome(task.run_id, RunState.FAILED, error=f"job {job.job_id}: {err}")
                tracker.record(outcome)
            if pending:
                time.sleep(poll)
    except KeyboardInterrupt:
        tracker.interrupted = True
        tracker.write(
            f"stopped waiting; {len(pending)} jobs keep running (scancel stops them); "
            "`glow-repro status` shows their progress"
        )


def check_launcher(name: str) -> None:
    """Raise a one-line error if launcher ``name`` cannot run on this machine."""
    if name not in LAUNCHERS:
        raise LauncherError(f"launcher {name!r}: must be one of {', '.join(LAUNCHERS)}")
    if name == "slurm" and shutil.which("sbatch") is None:
        raise LauncherError("--launcher slurm needs SLURM (no sbatch on PATH); use --launcher local here")


Launcher = Callable[[Sequence[RunTask], Tracker, LaunchOptions], None]

LAUNCHERS: dict[str, Launcher] = {
    "inprocess": launch_inprocess,
    "local": launch_local,
    "slurm": partial(launch_submitit, cluster="slurm"),
    "submitit-local": partial(launch_submitit, cluster="local"),
    "submitit-debug": partial(launch_submitit, cluster="debug"),
}
