"""``--launcher local``: up to ``--workers`` worker processes at once, one per run, the CPU
threads split among them.

Each local worker is a fresh process that trains one run and exits: every run gets its own
thread count, memory is given back, and a worker never outlives the run it was given. Where
the platform has it (Linux, macOS) workers are forked from a fork server that imported torch
and the training code once (:data:`PRELOAD`), so a run does not spend seconds importing them;
the server has run nothing, so each worker starts as clean as a spawned one, and it takes the
parent's working directory and environment as they are when the run starts. Elsewhere
workers are spawned. The parent starts and reaps the workers itself, one pipe each, with no
executor thread to hang. Signals (SIGINT from the terminal's Ctrl-C reaches every process of
the group; SIGTERM):

- a worker starts with both ignored, installs its own handlers and then says it is ready; a
  signal before ``train`` starts cancels the run untouched; inside it, ``train`` checkpoints
  and writes ``interrupted``, and the worker sends that outcome; any later signal is noted and
  nothing raised, so a worker always exits quietly with status 0. SIGTERM when the launching
  process dies, even by SIGKILL (Linux: a thread waits on its pidfd), does the same.
- the parent turns both into a count checked between waits, never an exception. The first
  starts no further run, passes SIGINT on to every ready worker (and to one that gets ready
  later) and waits for their outcomes; a second kills the workers at once and marks their runs
  ``interrupted`` (each resumes from its last checkpoint). Once interrupted, the parent keeps
  ignoring both signals: it is on its way out, and a late Ctrl-C must not leave it half-done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import select
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from glow_repro.run.rundir import RunDir, RunState
from glow_repro.study.launchers.base import Launched, LaunchOptions, register
from glow_repro.study.launchers.execute import execute_run, interrupt_on_signal, keep_status
from glow_repro.study.launchers.progress import Progress
from glow_repro.study.launchers.tasks import Outcome, RunTask

#: What a worker sends once its signal handlers are in, before its outcome.
READY = "ready"
#: Seconds a worker has to exit after sending its outcome before it is killed.
EXIT_TIMEOUT = 30.0
#: Modules the fork server imports once for all workers: what every run imports before its
#: first step, and the figure code it imports at its end.
PRELOAD = (
    "glow_repro.study.launchers.local",
    "glow_repro.run.train",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)


@dataclass(frozen=True)
class _Surroundings:
    """The parent's working directory and environment when it starts a worker; a forked worker
    takes them over, since the fork server kept those of the moment it started."""

    cwd: str
    environ: dict[str, str]

    @classmethod
    def now(cls) -> _Surroundings:
        return cls(os.getcwd(), dict(os.environ))

    def enter(self) -> None:
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.environ)


def _worker_main(task: RunTask, conn: Connection, launcher_pid: int, surroundings: _Surroundings) -> None:
    """A local worker's life: its signal handlers, SIGTERM once the launching process is gone,
    ``ready``, one run and its outcome. Signals were ignored from its start until here
    (:func:`_start_worker`)."""
    signal.signal(signal.SIGINT, interrupt_on_signal)
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    if not _terminate_with(launcher_pid):
        return
    surroundings.enter()
    try:
        conn.send(READY)
        outcome = execute_run(task)
        try:
            conn.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as err:  # a summary that cannot go back
            conn.send(Outcome(task.run_id, RunState.FAILED, error=f"{type(err).__name__}: {err}"))
    except OSError:  # the parent is gone; the run's own files say what happened
        pass


def _terminate_with(launcher_pid: int) -> bool:
    """Send this worker SIGTERM when the launching process exits, even by SIGKILL: a thread
    waits on the launcher's pidfd (Linux 5.3 and later). The worker's parent may be the fork
    server, which outlives the launcher while any worker runs, so the parent's death is no
    signal. False when the launcher is gone already; without pidfds only that is checked."""
    try:
        pidfd = os.pidfd_open(launcher_pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # not Linux, or a kernel without pidfd_open
        try:
            os.kill(launcher_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_for_exit() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_exit, name="launcher watch", daemon=True).start()
    return True


def worker_context() -> Any:
    """Where workers come from: a fork server that has imported :data:`PRELOAD`, or spawn on
    platforms without fork servers. The server starts with the first worker, so it inherits
    the ignored signals of :func:`_start_worker` and its children start with them ignored too."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


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


def local_threads(workers: int) -> int:
    """CPU threads per worker: the cores this process may use, split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


class LocalPool:
    name = "local"
    description = "worker processes on this machine, --workers of them at once (the CPU threads split among them)"

    def check(self) -> None:
        """Runs anywhere."""

    def slots(self, tasks: Sequence[RunTask], options: LaunchOptions) -> int:
        return options.workers

    def launch(self, tasks: Sequence[RunTask], options: LaunchOptions, progress: Progress) -> Launched:
        """Up to ``options.workers`` worker processes at once, one per run; a dead worker fails
        its run, not the study. Signals as in the module docstring."""
        threads = local_threads(options.workers)
        context = worker_context()
        workers: dict[Connection, _Worker] = {}
        launched = Launched()
        with _ParentSignals() as signals:  # from here: deal_gpus imports torch, which takes a while
            queue = deque(
                task if task.config.train.threads else dataclasses.replace(task, threads=threads)
                for task in deal_gpus(tasks)
            )
            while workers or (queue and not signals.count):
                while queue and not signals.count and len(workers) < options.workers:
                    worker = _start_worker(context, queue.popleft(), signals)
                    workers[worker.conn] = worker
                answered = cast(list[Connection], wait(list(workers), timeout=0.2))  # of the pipes given
                if signals.count and not launched.interrupted:
                    launched.interrupted = True
                    progress.stopping()
                    progress.write("interrupted: stopping workers, saving checkpoints ... (Ctrl-C again stops at once)")
                    for worker in workers.values():
                        if worker.ready:
                            worker.interrupt()
                if signals.count > 1:
                    _stop_at_once(list(workers.values()), launched, progress)
                    return launched
                for conn in answered:
                    worker = workers[conn]
                    message = _receive(conn)
                    if message == READY:
                        worker.ready = True
                        if launched.interrupted:
                            worker.interrupt()
                        continue
                    del workers[conn]
                    outcome = worker.finish(sent=message)
                    launched.add(outcome, progress)
                    if outcome.state in (RunState.INTERRUPTED, RunState.CANCELLED):
                        signals.count = max(signals.count, 1)  # a signal the parent missed while starting a worker
            launched.interrupted = launched.interrupted or bool(signals.count)
        return launched


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
                keep_status(run_dir, RunState.INTERRUPTED)
                state = RunState.INTERRUPTED
            return Outcome(self.task.run_id, RunState.CANCELLED if state is RunState.PENDING else state)
        if state is RunState.RUNNING:
            error = "worker process died (killed, or out of memory?)"
            keep_status(run_dir, RunState.FAILED, error=error)
        else:
            error = f"worker process died at start (exit code {self.process.exitcode})"
        return Outcome(self.task.run_id, RunState.FAILED, error=error)


def _start_worker(context: Any, task: RunTask, signals: _ParentSignals) -> _Worker:
    """Start a worker with SIGINT and SIGTERM ignored (it inherits that through exec), so that a
    Ctrl-C while the interpreter starts gives no traceback; it reports ``ready`` once its own
    handlers are in. A signal to the parent in these few milliseconds is lost, but reaches the
    running workers too, whose interrupted outcomes stop the launch all the same."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(
        target=_worker_main, args=(task, writer, os.getpid(), _Surroundings.now()), name=f"run {task.run_id}"
    )
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


def _stop_at_once(workers: list[_Worker], launched: Launched, progress: Progress) -> None:
    """A second Ctrl-C: kill the workers; their runs resume from their last checkpoints."""
    if not workers:
        return
    progress.write("stopping at once: workers killed; each run resumes from its last checkpoint")
    for worker in workers:
        worker.process.kill()
    for worker in workers:
        launched.add(worker.finish(killed=True), progress)


register(LocalPool())
