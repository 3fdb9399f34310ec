"""The run directory: its layout, its states, crash-safe writers, append-only logs and its lock;
and the study directory that holds run directories (:class:`StudyDir`).

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
leaves either the old or the new file (and perhaps a stale ``.<name>.*.tmp``, which
:meth:`RunDir.remove_stale_temporaries` clears on resume). JSONL logs are append-only; a kill
can leave at most one torn last line, which readers skip, and :meth:`JsonlLog.truncate_after`
rewrites a log to the rows a checkpoint knows about when a run resumes.

Every file is read back through one layer here (:func:`read_text`, :func:`read_json`,
:meth:`JsonlLog.read`, :func:`read_torch_file`; YAML through ``config.read_yaml``): bytes that
are not UTF-8, a decode error, a value of the wrong shape or a foreign file become one
:class:`UnreadableFileError` line that names the file and what to do.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from filelock import FileLock, Timeout

from glow_repro.core.config import ConfigError, decode_utf8
from glow_repro.errors import UserFacingError

LOCK_NAME = ".lock"
#: Who holds the lock: ``{"pid", "host", "since"}``, written by the holder after it locks.
LOCK_OWNER = ".lock.owner"

#: What to do about a damaged record of a run (a log, its status or summary).
RUN_REMEDY = (
    "restore it from a backup, or move the run directory away and `glow-repro run` (or `train`) trains the run again"
)


class UnreadableFileError(UserFacingError):
    """A file read back is damaged, foreign or of the wrong shape; the message names the file
    and what to do."""


class RunLockedError(UserFacingError):
    """Another process holds the run's lock: it is training the run now."""


if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # enum.StrEnum is new in 3.11: what RunState needs of it, a str whose str() is its value

    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return str(self.value)


class RunState(StrEnum):
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


def read_text(path: str | Path, remedy: str = RUN_REMEDY) -> str:
    """The UTF-8 text of ``path`` (FileNotFoundError when there is none); other bytes are an
    :class:`UnreadableFileError` that names the file and ``remedy``."""
    try:
        return decode_utf8(Path(path).read_bytes(), path)
    except ConfigError as err:
        raise UnreadableFileError(f"{str(err).removesuffix('; save it as UTF-8')}; {remedy}") from None


def _shape_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def read_json(
    path: str | Path, default: Any = None, *, expect: type | tuple[type, ...] = object, remedy: str = RUN_REMEDY
) -> Any:
    """The JSON value in ``path``, or ``default`` when there is no such file. Bytes that are
    not UTF-8 JSON, or a value that is not an ``expect`` (e.g. ``dict``), are an
    :class:`UnreadableFileError` naming the file and ``remedy``."""
    try:
        text = read_text(path, remedy)
    except FileNotFoundError:
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); {remedy}") from None
    if not isinstance(value, expect):
        raise UnreadableFileError(
            f"{path}: holds {_shape_name(type(value))} where {_shape_name(expect)} belongs; {remedy}"
        )
    return value


def read_torch_file(
    path: str | Path, load: Callable[[Path], Any], *, what: str, keys: Iterable[str], remedy: str
) -> dict[str, Any]:
    """``load(path)`` (``torch.load``: this layer never imports torch) of a file that must be
    a mapping holding ``keys``. A truncated, damaged or foreign file (``what`` names what it
    should be) is an :class:`UnreadableFileError` naming the file and ``remedy``."""
    path = Path(path)
    try:
        state = load(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load raises a different type for each kind of damage
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UnreadableFileError(f"{path}: unreadable {what} ({detail}); {remedy}") from None
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise UnreadableFileError(f"{path}: not a glow-repro {what} (no {', '.join(missing)}); {remedy}")
    return state


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
        """Every complete row; a torn last line (a kill mid-append) is skipped. Any other
        line that is not a JSON object (with an integer ``step``, where it has one) is an
        :class:`UnreadableFileError`."""
        return self.scan()[0]

    def scan(self) -> tuple[list[dict[str, Any]], bool]:
        """The complete rows, and whether a torn last line (no newline, not JSON) follows them."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], False
        lines = data.split(b"\n")
        last = lines.pop()  # b"" when the file ends with a newline, else an unterminated line
        rows = [self._row(line, number) for number, line in enumerate(lines, 1) if line.strip()]
        if not last.strip():
            return rows, False
        try:
            rows.append(self._row(last, len(lines) + 1))
        except UnreadableFileError:
            return rows, True
        return rows, False

    def _row(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnreadableFileError(f"{self.path}: line {number} is not JSON ({err}); {RUN_REMEDY}") from None
        step = row.get("step", 0) if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UnreadableFileError(
                f"{self.path}: line {number} is not a row of this log (an object with an integer step); {RUN_REMEDY}"
            )
        return row

    def truncate_after(self, step: int) -> bool:
        """Atomically keep only complete rows with ``row["step"] <= step``; True when a torn
        last line was dropped with them (a repair the caller records)."""
        if not self.path.exists():
            return False
        rows, torn = self.scan()
        kept = [row for row in rows if row.get("step", -1) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, default=float) + "\n" for r in kept))
        return torn


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
        """The last written status: ``{"state": "pending"}`` for a run never started, and
        ``{"state": "unreadable", "error": why}`` when status.json cannot be read or does not
        hold a recorded state (training it could overwrite a finished run)."""
        remedy = "delete it and run the study again: the run resumes from its checkpoint and writes a new one"
        try:
            status = read_json(self.status_file, default=None, expect=dict, remedy=remedy)
        except UnreadableFileError as err:
            return {"state": RunState.UNREADABLE, "error": str(err)}
        if status is None:
            return {"state": RunState.PENDING}
        recorded = [s.value for s in RunState if s.recorded]
        step = status.get("step", 0)
        if status.get("state") not in recorded or not isinstance(step, int) or isinstance(step, bool):
            return {
                "state": RunState.UNREADABLE,
                "error": f"{self.status_file}: no recorded state and step in it; {remedy}",
            }
        return status

    def state(self) -> RunState:
        """The recorded state of ``status.json``: ``pending`` when there is none,
        ``unreadable`` when it cannot be read."""
        return RunState(self.status()["state"])

    def write_status(self, state: RunState | str, **fields: Any) -> None:
        recorded = [s.value for s in RunState if s.recorded]
        if state not in recorded:
            raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(recorded)}")
        record = {**fields, "state": RunState(state), "updated": time.time()}
        atomic_write_json(self.status_file, record)

    def observed_state(self) -> RunState:
        """:meth:`state`, except that a ``running`` status whose lock nobody holds reads as
        ``killed`` (its trainer died; ``glow-repro run`` resumes it)."""
        state = self.state()
        if state is RunState.RUNNING and not RunLock(self.path).held_elsewhere():
            return RunState.KILLED
        return state

    def is_finished(self) -> bool:
        return self.state().finished

    def summary(self) -> dict[str, Any]:
        """summary.json of a finished run (``{}`` before it finishes)."""
        return read_json(self.summary_file, default={}, expect=dict)

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the ``.<name>.*.tmp`` files that kills left in the middle of atomic writes
        (here and in samples/ and capsules/); returns their paths relative to the run. Call it
        only while holding the run's lock: another trainer's temporaries are not stale."""
        removed = []
        for folder in (self.path, self.samples, self.capsules):
            for temporary in sorted(folder.glob(".*.tmp")) if folder.is_dir() else ():
                temporary.unlink(missing_ok=True)
                removed.append(str(temporary.relative_to(self.path)))
        return removed


class StudyDir:
    """Paths of one study's results directory, ``results/<study name>/`` (unless ``--results``
    says otherwise): the only place that names a study's files. It holds::

        study.yaml        the spec as run: base inlined, --set applied, original header kept
        manifest.json     {"study", "spec_hash", "runs": {run_id: {"variant", "seed", "overrides"}}}:
                          every run ever planned here, with its label and swept settings (``status``
                          uses it); ``spec_hash`` (study.spec.spec_hash) ties the directory to one
                          study spec, and another spec is refused unless forced (``force_spec``)
        runs/<run_id>/    one run directory (:class:`RunDir`)
        tables/           steps, evals, finals, events, configs as .parquet and .csv (the long
                          tables of glow_repro.study.tables), rewritten at the end of every
                          ``glow-repro run`` that was not interrupted, failed runs included
        manipulations/<variant folder>/
                          the manipulation figures a study asks for (glow_repro.study.manipulations)
        submitit/         submitit logs (slurm launcher only)
        decisions.jsonl   the seed-adding record (glow_repro.study.record): one row per look of
                          ``--until-resolved``: the plan, seeds, threshold, alpha spent, the
                          claims' verdicts, continue or stop and why
        .manifest.lock, .decisions.lock, .tables.lock
                          held while a runner writes the manifest, decides on seeds (one
                          ``--until-resolved`` at a time) or writes the tables
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    study_file = property(lambda self: self.path / "study.yaml")
    manifest = property(lambda self: self.path / "manifest.json")
    runs = property(lambda self: self.path / "runs")
    tables = property(lambda self: self.path / "tables")
    manipulations = property(lambda self: self.path / "manipulations")
    submitit = property(lambda self: self.path / "submitit")
    decisions = property(lambda self: self.path / "decisions.jsonl")
    manifest_lock = property(lambda self: self.path / ".manifest.lock")
    decisions_lock = property(lambda self: self.path / ".decisions.lock")
    tables_lock = property(lambda self: self.path / ".tables.lock")

    def run(self, run_id: str) -> RunDir:
        """The directory of run ``run_id`` (``runs/<run_id>/``)."""
        return RunDir(self.runs / run_id)

    def run_dirs(self) -> list[RunDir]:
        """Every folder under ``runs/``, by name; none when there is no ``runs/``."""
        return [RunDir(p) for p in sorted(self.runs.iterdir()) if p.is_dir()] if self.runs.is_dir() else []

    def manipulation(self, folder: str) -> Path:
        """``manipulations/<folder>/``: one variant's figures (``folder`` is its file-safe name)."""
        return self.manipulations / folder


class RunLock:
    """Non-blocking exclusive lock of one run directory, so a run is never trained by two
    processes at once: ``train`` takes it, and so do the launchers before they call ``train``.

    An OS-level ``flock`` (through ``filelock``) on ``<run dir>/.lock``: the kernel drops it
    when the holding process dies, even by SIGKILL, so a killed runner never leaves a run
    stuck. Acquiring never waits: a locked run is being trained by another process, and the
    caller leaves it alone. The holder notes its pid and host in ``.lock.owner``, so that a
    refused trainer can name it. A second lock object of the same run fails to acquire it,
    in this process too; :meth:`held_here` tells ``train`` that a launcher of this process
    took the lock for it.
    """

    _held_here: ClassVar[set[str]] = set()

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._key = str(self.run_dir.absolute())
        self._lock = FileLock(self.run_dir / LOCK_NAME)

    def _try(self) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            return False
        return True

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process now holds it."""
        if not self._try():
            return False
        self._held_here.add(self._key)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        try:
            atomic_write_json(self.run_dir / LOCK_OWNER, owner)
        except OSError:
            pass  # the lock holds without its note; a refused trainer then says "another process"
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            (self.run_dir / LOCK_OWNER).unlink(missing_ok=True)
            self._held_here.discard(self._key)
        self._lock.release()

    def held_here(self) -> bool:
        """True while some lock object of this process holds this run's lock."""
        return self._key in self._held_here

    def holder(self) -> str:
        """Who holds the lock, as its note says: ``pid 123 on host``, else ``another process``."""
        try:
            owner = read_json(self.run_dir / LOCK_OWNER, default=None, expect=dict)
        except (UnreadableFileError, OSError):
            owner = None
        if not owner or "pid" not in owner:
            return "another process"
        return f"pid {owner['pid']} on {owner.get('host', 'an unknown host')}"

    def held_elsewhere(self) -> bool:
        """True while another process (or another lock object here) holds this run's lock.
        It only looks: the lock file is opened read-only, so that a read-only results
        directory can be read (``flock`` needs no write access, and conflicts as filelock's)."""
        try:
            fd = os.open(self.run_dir / LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # which lets go of the flock taken here
        return False
