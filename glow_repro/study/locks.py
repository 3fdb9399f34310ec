"""Per-run locks, so two runners on one results directory never train a run twice (issue #4).

A :class:`RunLock` is an OS-level ``flock`` (through ``filelock``) on ``<run dir>/.lock``:
the kernel drops it when the holding process dies, even by SIGKILL, so a killed runner
never leaves a run stuck. Acquiring never waits: a run that is locked is being trained by
another process, and the caller skips it.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

LOCK_NAME = ".lock"


class RunLock:
    """Non-blocking exclusive lock of one run directory."""

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
