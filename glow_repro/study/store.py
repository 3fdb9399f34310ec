"""Run-directory layout and crash-safe writers (issue #3; DESIGN "contracts").

A run directory holds::

    config.yaml        resolved run config (atomic)
    status.json        {"state": running|done|failed|diverged|interrupted, "step", "error", ...}
    environment.json   what the run ran on: versions, device, threads, git commit, host
    metrics.jsonl      one row per logged training step (append-only)
    evals.jsonl        one row per test evaluation (append-only)
    events.jsonl       stability events (append-only)
    checkpoint.pt      latest checkpoint (atomic)
    summary.json       final numbers of a finished run (atomic)
    samples/           sample grids and reconstructions

Every whole-file write goes through a temp file, fsync and rename, so a kill at any moment
leaves either the old or the new file. JSONL logs are append-only; a kill can leave at most
one torn last line, which readers skip, and :meth:`JsonlLog.truncate_after` rewrites a log to
the rows a checkpoint knows about when a run resumes. This module never imports torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATES = ("pending", "running", "done", "failed", "diverged", "interrupted")
FINISHED_STATES = ("done", "diverged")


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
    metrics = property(lambda self: JsonlLog(self.path / "metrics.jsonl"))
    evals = property(lambda self: JsonlLog(self.path / "evals.jsonl"))
    events = property(lambda self: JsonlLog(self.path / "events.jsonl"))

    def status(self) -> dict[str, Any]:
        """The last written status, or ``{"state": "pending"}`` for a run never started."""
        return read_json(self.status_file, default=None) or {"state": "pending"}

    def write_status(self, state: str, **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(STATES)}")
        record = {**fields, "state": state, "updated": time.time()}
        atomic_write_json(self.status_file, record)

    def is_finished(self) -> bool:
        return self.status().get("state") in FINISHED_STATES

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_file, default={}) or {}
