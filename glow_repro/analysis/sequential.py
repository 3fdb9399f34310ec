"""Adding seeds until the claims are resolved, at a fixed overall error rate
(docs/verdicts.md, "Adding seeds").

The seeds are added in looks planned in advance (:class:`SeedPlan`): the study's own seeds,
then as many again at each look, up to ``max_seeds``. Each look judges the claims at the
thresholds of a group-sequential boundary (:mod:`glow_repro.analysis.boundaries`) computed
for exactly those looks, so whatever the data and whenever the procedure stops, a true-null
pair is declared in either direction with probability at most ``alpha / 2``. The study goes on
while a claim is inconclusive and looks remain; it never stops for futility, so "inconclusive"
at the last look means the planned seeds were not enough.

:func:`decide` is the whole rule as a pure function of the tables, the claims and the look;
:func:`results_verdicts` judges a results directory at the look its record ends on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from glow_repro.analysis.boundaries import Boundary, Spending
from glow_repro.analysis.verdicts import ALPHA, Look, study_verdicts, verdicts
from glow_repro.core.config import ConfigError
from glow_repro.errors import ResultsDirError
from glow_repro.run.rundir import StudyDir
from glow_repro.study.record import REMEDY, RecordedLook, SeedRecord
from glow_repro.study.runner import read_manifest
from glow_repro.study.spec import PILOT_SEEDS_START, ClaimSpec, StudySpec
from glow_repro.study.tables import Tables, load_tables, write_frame

#: Most seeds per variant when neither ``--max-seeds`` nor the study's ``max_seeds`` says.
DEFAULT_MAX_SEEDS = 12
#: The most seeds per variant a plan may reach.
MAX_PLANNED_SEEDS = 64


@dataclass(frozen=True)
class SeedPlan:
    """Every seed the study may run, in the order they are added, the seed counts at which
    the claims are judged, and how alpha is spent over them."""

    seeds: tuple[int, ...]
    looks: tuple[int, ...]
    alpha: float = ALPHA
    spending: Spending = "obrien-fleming"

    @classmethod
    def extend(
        cls, initial: Sequence[int], max_seeds: int, alpha: float = ALPHA, spending: Spending = "obrien-fleming"
    ) -> SeedPlan:
        """Looks at the initial seed count and every multiple of it up to ``max_seeds`` (the
        last look is ``max_seeds`` itself); new seeds are the integers after the largest
        initial seed, so a study never draws a pilot's seeds (nor one below its own)."""
        step = len(initial)
        total = max(max_seeds, step)
        looks = tuple(sorted({*range(step, total, step), total}))
        seeds = list(initial)
        candidate = max(initial) + 1
        while len(seeds) < total:
            if candidate not in seeds:
                seeds.append(candidate)
            candidate += 1
        return cls(tuple(seeds), looks, alpha, spending)

    @classmethod
    def recorded(cls, row: RecordedLook) -> SeedPlan:
        return cls(tuple(row.seed_order), tuple(row.looks), row.alpha, row.spending)

    @property
    def boundary(self) -> Boundary:
        return Boundary(self.looks, self.alpha, self.spending)

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def look(self, index: int) -> Look:
        return Look(self.boundary, index)

    def seeds_at(self, look: int) -> list[int]:
        return list(self.seeds[: self.looks[look]])


@dataclass(frozen=True)
class Decision:
    """What the rule decided at one look, as recorded in ``decisions.jsonl``."""

    look: int
    plan: SeedPlan
    action: str  # continue | stop
    reason: str
    verdicts: dict[str, str]
    add_seeds: list[int] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return self.plan.looks[self.look]

    @property
    def threshold(self) -> float:
        """The paired t-test's nominal two-sided threshold at this look."""
        return self.plan.boundary.t_thresholds()[self.look]

    def record(self) -> RecordedLook:
        plan = self.plan
        return RecordedLook(
            look=self.look, seeds=self.seeds, alpha=plan.alpha, spending=plan.spending, looks=list(plan.looks),
            seed_order=list(plan.seeds), threshold=self.threshold, alpha_spent=plan.boundary.cumulative[self.look],
            action=self.action, reason=self.reason, verdicts=self.verdicts, add_seeds=self.add_seeds,
        )  # fmt: skip


def decide(
    finals: pd.DataFrame,
    evals: pd.DataFrame,
    claims: Sequence[ClaimSpec],
    swept: Sequence[str],
    plan: SeedPlan,
    look: int,
) -> tuple[Decision, pd.DataFrame]:
    """The decision at ``look`` and the verdict table it rests on, from the runs of the
    look's seeds."""
    seeds = plan.seeds_at(look)
    table = verdicts(finals[finals["seed"].isin(seeds)], evals[evals["seed"].isin(seeds)], claims, swept,
                     plan.look(look))  # fmt: skip
    outcome = {claim: str(rows["verdict"].iloc[0]) for claim, rows in table.groupby("claim", sort=False)}
    inconclusive = [claim for claim, verdict in outcome.items() if verdict == "inconclusive"]
    decision = partial(Decision, look=look, plan=plan, verdicts=outcome)
    if not inconclusive:
        return decision(action="stop", reason="every claim is resolved"), table
    if look + 1 >= len(plan.looks):
        reason = f"{', '.join(inconclusive)}: inconclusive at the maximum of {plan.max_seeds} seeds"
        return decision(action="stop", reason=reason), table
    added = plan.seeds_at(look + 1)[len(seeds) :]
    reason = f"{', '.join(inconclusive)}: inconclusive; adding seeds {', '.join(map(str, added))}"
    return decision(action="continue", reason=reason, add_seeds=added), table


@dataclass(frozen=True)
class SeedJudge:
    """The judge of ``glow-repro run --until-resolved``: :func:`decide` on the results so far,
    with the looks planned from the study's seeds, ``max_seeds`` (when None: the study's own
    ``max_seeds``, else :data:`DEFAULT_MAX_SEEDS`) and the study's spending function, at
    overall alpha :data:`ALPHA`."""

    max_seeds: int | None = None

    def limit(self, spec: StudySpec) -> int:
        return self.max_seeds or spec.max_seeds or DEFAULT_MAX_SEEDS

    def plan(self, spec: StudySpec) -> SeedPlan:
        return SeedPlan.extend(spec.seeds, self.limit(spec), ALPHA, spec.spending)

    def check(self, spec: StudySpec) -> None:
        if not spec.claims:
            raise ConfigError(
                f"{spec.source}: --until-resolved needs the claims the study tests "
                "(claims: in the study file; docs/verdicts.md)"
            )
        limit = self.limit(spec)
        if not len(spec.seeds) <= limit <= MAX_PLANNED_SEEDS:
            raise ConfigError(
                f"--max-seeds {limit}: must be from the {len(spec.seeds)} seeds of {spec.source} to {MAX_PLANNED_SEEDS}"
            )
        plan = self.plan(spec)
        if not spec.pilot and max(plan.seeds) >= PILOT_SEEDS_START:
            raise ConfigError(
                f"{spec.source}: seeds: the plan would reach seed {max(plan.seeds)}, and seeds from "
                f"{PILOT_SEEDS_START} on are the pilots' (docs/pilot.md); start the study's seeds lower"
            )

    def resume(self, spec: StudySpec, results_dir: Path) -> tuple[int, list[int], list[RecordedLook]]:
        """Where a study resumes: the next look to take, the seeds it trains, and the looks
        already recorded. A record of another plan is refused: alpha is never spent twice."""
        plan, rows = self.plan(spec), checked_record(results_dir)
        if not rows:
            return 0, plan.seeds_at(0), rows
        recorded = SeedPlan.recorded(rows[-1])
        if recorded != plan:
            raise ResultsDirError(
                f"{StudyDir(results_dir).decisions}: its looks were planned as {recorded.boundary.describe()} "
                f"at alpha {recorded.alpha:g} over seeds {_seed_range(recorded.seeds)}; this run plans "
                f"{plan.boundary.describe()} at alpha {plan.alpha:g} over seeds {_seed_range(plan.seeds)}. A plan "
                "cannot change after a look (the alpha already spent would be spent again): run with the "
                "recorded plan, or give this one its own --results directory"
            )
        last = rows[-1]
        if last.action == "stop":
            return len(rows), plan.seeds_at(last.look), rows
        return last.look + 1, plan.seeds_at(last.look + 1), rows

    def __call__(self, spec: StudySpec, results_dir: Path, look: int) -> Decision:
        tables = load_tables(results_dir)
        return decide(tables.finals, tables.evals, spec.claims, tables.swept, self.plan(spec), look)[0]


def _seed_range(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if list(seeds) == list(range(seeds[0], seeds[-1] + 1)) else str(list(seeds))


@dataclass(frozen=True)
class ResultsVerdict:
    """The verdicts of a results directory, the look they were taken at, and the seeds they
    judge (None: every seed present)."""

    table: pd.DataFrame
    look: Look | None
    seeds: list[int] | None


def checked_record(results_dir: Path) -> list[RecordedLook]:
    """The record's looks, each checked against the boundary its plan implies: a threshold or
    alpha spent that the plan does not give (a hand edit) is a :class:`ResultsDirError`."""
    record = SeedRecord(results_dir)
    rows = record.read()
    for number, row in enumerate(rows, 1):
        plan = SeedPlan.recorded(row)
        expected = (ALPHA, plan.boundary.t_thresholds()[row.look], plan.boundary.cumulative[row.look])
        if not np.allclose((row.alpha, row.threshold, row.alpha_spent), expected, rtol=1e-9, atol=0):
            raise ResultsDirError(
                f"{record.path}: line {number}: alpha {row.alpha:g}, threshold {row.threshold:g} and alpha spent "
                f"{row.alpha_spent:g} are not what its plan gives ({expected[0]:g}, {expected[1]:g}, "
                f"{expected[2]:g}); {REMEDY}"
            )
    return rows


def recorded_look(results_dir: str | Path) -> tuple[Look | None, list[int] | None]:
    """The look a results directory's record ends on and its seeds, or (None, None) for a
    study run without ``--until-resolved``. A directory whose seeds were added by looking
    but whose record is missing, empty or damaged is a :class:`ResultsDirError`."""
    results_dir = Path(results_dir)
    rows = checked_record(results_dir)
    if not rows:
        manifest = read_manifest(results_dir) or {}
        if manifest.get("until_resolved"):
            raise ResultsDirError(
                f"{StudyDir(results_dir).decisions}: missing or empty, but this study was run with "
                "--until-resolved: its seeds may have been added by looking at the results, which a verdict at "
                "full alpha would ignore. Run the same `glow-repro run --until-resolved` command to take the "
                "first look, or restore the record"
            )
        return None, None
    plan = SeedPlan.recorded(rows[-1])
    return plan.look(rows[-1].look), plan.seeds_at(rows[-1].look)


def results_verdicts(results_dir: str | Path, tables: Tables | None = None) -> ResultsVerdict:
    """The verdicts of a results directory at the look its record ends on (every seed at
    alpha 0.05 without a record)."""
    look, seeds = recorded_look(results_dir)
    tables = tables if tables is not None else load_tables(results_dir)
    if seeds is not None:
        tables = tables.only_seeds(seeds)
    return ResultsVerdict(study_verdicts(tables, look), look, seeds)


def write_verdicts(results_dir: str | Path) -> pd.DataFrame:
    """:func:`results_verdicts`, also written as ``tables/verdicts.parquet`` and ``.csv`` when
    the study declares claims."""
    tables = load_tables(results_dir)
    table = results_verdicts(results_dir, tables).table
    if tables.study.get("claims"):
        write_frame(table, StudyDir(results_dir).tables, "verdicts")
    return table
