"""The seed-adding record, ``results/<study>/decisions.jsonl`` (docs/verdicts.md, "Adding
seeds"): one row per look of ``glow-repro run --until-resolved``, with the plan (overall
alpha, spending function, planned looks and seed order), the threshold used, the alpha spent,
the claims' verdicts and what was decided.

It is the protected source of the alpha a study has spent, so it is validated whenever it is
read (a damaged or hand-edited record is an error naming the file and line, never read as
"no looks"), rewritten whole and atomically on every look (a kill leaves the old record or
the new one), and written by one ``run --until-resolved`` at a time (:meth:`SeedRecord.writer`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glow_repro.errors import ResultsDirError
from glow_repro.run.rundir import StudyDir, atomic_write_text

REMEDY = (
    "the record says how much alpha the looks spent, so it cannot be judged without it: restore it "
    "(for example from a backup or version control), or judge the study again in a new results directory"
)


class RecordedLook(BaseModel):
    """One row of the record."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    look: int = Field(ge=0)
    seeds: int = Field(ge=1)
    alpha: float = Field(gt=0, lt=1)
    spending: Literal["obrien-fleming", "pocock"]
    looks: list[int] = Field(min_length=1)
    seed_order: list[int] = Field(min_length=1)
    threshold: float = Field(ge=0, le=1)
    alpha_spent: float = Field(ge=0, le=1)
    action: Literal["continue", "stop"]
    reason: str
    verdicts: dict[str, str]
    add_seeds: list[int] = Field(default_factory=list)

    def plan(self) -> tuple[float, str, tuple[int, ...], tuple[int, ...]]:
        """What must stay the same from look to look."""
        return self.alpha, self.spending, tuple(self.looks), tuple(self.seed_order)


class SeedRecord:
    """``decisions.jsonl`` of one results directory (its path: :attr:`StudyDir.decisions`)."""

    def __init__(self, results_dir: str | Path):
        self.results_dir = Path(results_dir)
        self.study = StudyDir(results_dir)
        self.path = self.study.decisions

    def read(self) -> list[RecordedLook]:
        """Every look recorded so far, checked row by row and against each other."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as err:
            raise ResultsDirError(f"{self.path}: cannot be read ({err}); {REMEDY}") from None
        rows: list[RecordedLook] = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = RecordedLook.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as err:
                why = err.errors()[0] if isinstance(err, ValidationError) else None
                detail = f"{'.'.join(map(str, why['loc']))}: {why['msg']}" if why else "not a JSON object"
                raise ResultsDirError(f"{self.path}: line {number}: {detail}; {REMEDY}") from None
            self._check_follows(rows, row, number)
            rows.append(row)
        return rows

    def _check_follows(self, rows: list[RecordedLook], row: RecordedLook, number: int) -> None:
        where = f"{self.path}: line {number}"
        if row.look != len(rows) or row.look >= len(row.looks) or row.seeds != row.looks[row.look]:
            raise ResultsDirError(f"{where}: look {row.look} at {row.seeds} seeds does not follow the plan; {REMEDY}")
        if rows and (rows[-1].action != "continue" or rows[-1].plan() != row.plan()):
            raise ResultsDirError(f"{where}: follows a stop, or changes the plan of the looks before it; {REMEDY}")

    def append(self, row: RecordedLook) -> None:
        """Add a look: the whole record is rewritten atomically."""
        rows = self.read()
        self._check_follows(rows, row, len(rows) + 1)
        text = "".join(json.dumps(r.model_dump()) + "\n" for r in [*rows, row])
        atomic_write_text(self.path, text)

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the record for one ``run --until-resolved``; a second one is refused."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.study.decisions_lock, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ResultsDirError(
                f"{self.results_dir}: another `glow-repro run --until-resolved` is deciding on this study; "
                "wait for it to finish (two at once would judge each other's unfinished seeds)"
            ) from None
        try:
            yield
        finally:
            lock.release()
