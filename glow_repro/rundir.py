"""The run directory: its layout, its states, crash-safe writers, append-only logs and its lock.

The lowest layer of the harness: training writes through it, the study runner plans with it,
and the analysis reads through it, so it never imports torch. A run directory holds::

    config.yaml        resolved run config (atomic)
    status.json        {"state": a recorded RunState, "step", "error", "updated", ...}
    environment.json   what the run ran on: versions, device, threads, git commit, host
    metrics.jsonl      one row per logged training step (append-only)
    evals.jsonl        one row per test evaluation (append-only)
    events.jsonl       stability events (append-only)
    checkpoint.pt      latest checkpoint (atomic)
    summary.json       final numbers of a finished run (atomic)
    capsules/          the model and batch of the first non-finite step (``glow-repro replay``)
    tensorboard/       TensorBoard event files, when ``train.tensorboard`` is on (a view of the logs)
    samples/           grids and reconstructions; ``samples.json`` describes what training
                       wrote at its end, ``sample.json`` what ``glow-repro sample`` wrote last
    .lock              held while a process trains the run (:class:`RunLock`)

Every whole-file write goes through a temp file, fsync and rename, so a kill at any moment
leaves either the old or the new file. JSONL logs are append-only; a kill can leave at most
one torn last line, which readers skip, and :meth:`JsonlLog.truncate_after` rewrites a log to
the rows a checkpoint knows about when a run resumes.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

LOCK_NAME = ".lock"


class RunState(enum.StrEnum):
    """Where a run stands. The values are the strings of ``status.json`` and of the tables;
    members are listed in display order (finished, in progress, stopped, not started).

    Recorded states are written to ``status.json``; the others are observed: ``killed`` (the
    status says running but no process holds the lock), ``elsewhere`` (another process holds
    it), ``cancelled`` (a launch stopped before the run started) and ``unreadable`` (its
    ``status.json`` exists but cannot be read).
    """

    DONE = "done"
    DIVERGED = "diverged"
    RUNNING = "running"
    ELSEWHERE = "elsewhere"
    KILLED = "killed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    PENDING = "pending"
    CANCELLED = "cancelled"
    UNREADABLE = "unreadable"

    @property
    def recorded(self) -> bool:
        """A state that ``status.json`` may hold."""
        return self not in (RunState.ELSEWHERE, RunState.KILLED, RunState.CANCELLED, RunState.UNREADABLE)

    @property
    def finished(self) -> bool:
        """A run that is over and is not trained again: it finished, or it diverged."""
        return self in (RunState.DONE, RunState.DIVERGED)

    @property
    def label(self) -> str:
        """The state as a count reads: ``2 done, 1 running elsewhere``."""
        return "running elsewhere" if self is RunState.ELSEWHERE else self.value

    def action(self, retry_failed: bool) -> str:
        """What ``glow-repro run`` does with a run in this state: ``skip`` a finished run,
        leave one locked by another process ``elsewhere``, ``retry`` a failed one (with
        ``--retry-failed``; else ``keep-failed``), leave one whose status cannot be read
        ``unreadable`` (training it could overwrite a finished run), ``train`` a new one,
        ``resume`` the rest."""
        if self.finished:
            return "skip"
        if self is RunState.UNREADABLE:
            return "unreadable"
        if self in (RunState.RUNNING, RunState.ELSEWHERE):
            return "elsewhere"
        if self is RunState.FAILED:
            return "retry" if retry_failed else "keep-failed"
        return "train" if self is RunState.PENDING else "resume"

    @classmethod
    def display_order(cls, states: Iterable[str]) -> list[RunState]:
        """The distinct ``states`` (members or their strings) in display order."""
        present = set(states)
        return [state for state in cls if state in present]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes owner-only files; respect the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


class JsonlLog:
    """Append-only JSON-lines table keyed by ``step``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        self.extend([row])

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, default=float) + "\n" for row in rows)
        if not text:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()

    def sync(self) -> None:
        """fsync the log, so everything appended so far survives a power loss."""
        if self.path.exists():
            with open(self.path, "a", encoding="utf-8") as handle:
                os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete row; a torn last line (a kill mid-append) is skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_after(self, step: int) -> None:
        """Atomically keep only complete rows with ``row["step"] <= step``."""
        if not self.path.exists():
            return
        kept = [row for row in self.read() if row.get("step", -1) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, default=float) + "\n" for r in kept))


class RunDir:
    """Paths and small helpers for one run's directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    status_file = property(lambda self: self.path / "status.json")
    environment = property(lambda self: self.path / "environment.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    summary_file = property(lambda self: self.path / "summary.json")
    samples = property(lambda self: self.path / "samples")
    capsules = property(lambda self: self.path / "capsules")
    tensorboard = property(lambda self: self.path / "tensorboard")
    error_file = property(lambda self: self.path / "error.txt")
    metrics = property(lambda self: JsonlLog(self.path / "metrics.jsonl"))
    evals = property(lambda self: JsonlLog(self.path / "evals.jsonl"))
    events = property(lambda self: JsonlLog(self.path / "events.jsonl"))

    def status(self) -> dict[str, Any]:
        """The last written status, or ``{"state": "pending"}`` for a run never started."""
        return read_json(self.status_file, default=None) or {"state": RunState.PENDING}

    def state(self) -> RunState:
        """The recorded state of ``status.json`` (``pending`` when there is none)."""
        return RunState(self.status().get("state", RunState.PENDING))

    def write_status(self, state: RunState | str, **fields: Any) -> None:
        recorded = [s.value for s in RunState if s.recorded]
        if state not in recorded:
            raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(recorded)}")
        record = {**fields, "state": RunState(state), "updated": time.time()}
        atomic_write_json(self.status_file, record)

    def is_finished(self) -> bool:
        return self.state().finished

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_file, default={}) or {}


class RunLock:
    """Non-blocking exclusive lock of one run directory, so two runners on one results
    directory never train a run twice.

    An OS-level ``flock`` (through ``filelock``) on ``<run dir>/.lock``: the kernel drops it
    when the holding process dies, even by SIGKILL, so a killed runner never leaves a run
    stuck. Acquiring never waits: a locked run is being trained by another process, and the
    caller leaves it alone.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._lock = FileLock(self.run_dir / LOCK_NAME)

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process now holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()

    def held_elsewhere(self) -> bool:
        """True while another process (or another lock object here) holds this run's lock."""
        if not (self.run_dir / LOCK_NAME).exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True
