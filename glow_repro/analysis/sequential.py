"""Adding seeds until the claims are resolved, at a fixed overall error rate
(docs/verdicts.md, "Adding seeds").

The seeds are added in looks planned in advance (:class:`SeedPlan`): the study's own seeds,
then as many again at each look, up to ``max_seeds``. Every look tests at
``alpha / number of looks`` (a Bonferroni split over the planned looks): whatever the data
and whenever the procedure stops, the chance that any look declares a true-null claim
reproduced or contradicted is at most the sum of the per-look levels, ``alpha``. Stopping
early because a claim cannot be resolved (futility) only removes chances to reject.

:func:`decide` is the whole rule as a pure function of the tables, the claims and the look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glow_repro.analysis.verdicts import ALPHA, shifted_effect, verdicts
from glow_repro.config import ConfigError
from glow_repro.study.spec import ClaimSpec, StudySpec
from glow_repro.study.tables import load_tables


@dataclass(frozen=True)
class SeedPlan:
    """Every seed the study may run, in the order they are added, and the seed counts at
    which the claims are judged."""

    seeds: tuple[int, ...]
    looks: tuple[int, ...]
    alpha: float = ALPHA

    @classmethod
    def extend(cls, initial: Sequence[int], max_seeds: int, alpha: float = ALPHA) -> SeedPlan:
        """Looks at the initial seed count and every multiple of it up to ``max_seeds`` (the
        last look is ``max_seeds`` itself); new seeds are the smallest unused integers."""
        step = len(initial)
        total = max(max_seeds, step)
        looks = tuple(sorted({*range(step, total, step), total}))
        seeds = list(initial)
        candidate = 0
        while len(seeds) < total:
            if candidate not in seeds:
                seeds.append(candidate)
            candidate += 1
        return cls(tuple(seeds), looks, alpha)

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / len(self.looks)

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def seeds_at(self, look: int) -> list[int]:
        return list(self.seeds[: self.looks[look]])


@dataclass(frozen=True)
class Decision:
    """What the rule decided at one look, as logged in ``decisions.jsonl``."""

    look: int
    seeds: int
    alpha: float
    action: str  # continue | stop
    reason: str
    verdicts: dict[str, str]
    add_seeds: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def worth_more_seeds(
    verdict: np.ndarray, significant: np.ndarray, effect: np.ndarray, needed: np.ndarray, max_seeds: int
) -> np.ndarray:
    """Per claim (pairs on the last axis): inconclusive, and ``max_seeds`` could still resolve
    it: every unresolved pair ``needed`` at most ``max_seeds`` (reproduced), or one unresolved
    pair against the claim does (contradicted). ``needed`` is the seeds needed at the largest
    effect the data do not rule out (``seeds_needed_best_case``): stopping at the observed
    effect would stop most studies of a true but noisily measured effect at the first look.
    A pair with no estimate yet (NaN) counts as reachable."""
    reachable = np.isnan(needed) | (needed <= max_seeds)
    unresolved = ~significant
    every = np.all(~unresolved | reachable, axis=-1)
    against = np.any(unresolved & (effect < 0) & reachable, axis=-1)
    return (np.asarray(verdict) == "inconclusive") & (every | against)


def decide(
    finals: pd.DataFrame,
    evals: pd.DataFrame,
    claims: Sequence[ClaimSpec],
    swept: Sequence[str],
    plan: SeedPlan,
    look: int,
) -> tuple[Decision, pd.DataFrame]:
    """The decision at ``look`` and the verdict table it rests on (at the per-look alpha),
    from the runs of the look's seeds."""
    seeds = plan.seeds_at(look)
    finals = finals[finals["seed"].isin(seeds)]
    table = verdicts(finals, evals[evals["seed"].isin(seeds)], claims, swept, plan.alpha_per_look)
    by_claim = {claim: rows for claim, rows in table.groupby("claim", sort=False)}
    outcome = {claim: str(rows["verdict"].iloc[0]) for claim, rows in by_claim.items()}
    open_claims = [
        claim for claim, rows in by_claim.items()
        if worth_more_seeds(rows["verdict"].to_numpy()[:1], rows["significant"].to_numpy(bool),
                            shifted_effect(rows).to_numpy(float), rows["seeds_needed_best_case"].to_numpy(float),
                            plan.max_seeds)[0]
    ]  # fmt: skip
    inconclusive = [claim for claim, verdict in outcome.items() if verdict == "inconclusive"]
    common = {"look": look, "seeds": len(seeds), "alpha": plan.alpha_per_look, "verdicts": outcome}
    if not inconclusive:
        return Decision(action="stop", reason="every claim is resolved", **common), table
    if look + 1 >= len(plan.looks):
        return Decision(
            action="stop",
            reason=(f"{', '.join(inconclusive)}: inconclusive at the maximum of {plan.max_seeds} seeds"),
            **common,
        ), table
    if not open_claims:
        return Decision(
            action="stop",
            reason=(
                f"{', '.join(inconclusive)}: inconclusive, and {plan.max_seeds} seeds could not resolve "
                "it at any effect inside the 95 % CIs (see seeds_needed_best_case)"
            ),
            **common,
        ), table
    added = plan.seeds_at(look + 1)[len(seeds) :]
    return Decision(
        action="continue",
        reason=(
            f"{', '.join(open_claims)}: inconclusive, resolvable within {plan.max_seeds} seeds at "
            f"effects inside the 95 % CIs; adding seeds {', '.join(map(str, added))}"
        ),
        add_seeds=added,
        **common,
    ), table


#: Most seeds per variant when neither ``--max-seeds`` nor the study's ``max_seeds`` says.
DEFAULT_MAX_SEEDS = 12


@dataclass(frozen=True)
class SeedJudge:
    """The judge of ``glow-repro run --until-resolved``: :func:`decide` on the results so far,
    with the looks planned from the study's seeds and ``max_seeds`` (when None: the study's
    own ``max_seeds``, else :data:`DEFAULT_MAX_SEEDS`)."""

    max_seeds: int | None = None
    alpha: float = ALPHA

    def limit(self, spec: StudySpec) -> int:
        return self.max_seeds or spec.max_seeds or DEFAULT_MAX_SEEDS

    def check(self, spec: StudySpec) -> None:
        if not spec.claims:
            raise ConfigError(
                f"{spec.source}: --until-resolved needs the claims the study tests "
                "(claims: in the study file; docs/verdicts.md)"
            )
        if self.limit(spec) < len(spec.seeds):
            raise ConfigError(
                f"--max-seeds {self.limit(spec)}: must be at least the {len(spec.seeds)} seeds of {spec.source}"
            )

    def __call__(self, spec: StudySpec, results_dir: Path, look: int) -> Decision:
        tables = load_tables(results_dir)
        plan = SeedPlan.extend(spec.seeds, self.limit(spec), self.alpha)
        return decide(tables.finals, tables.evals, spec.claims, tables.swept, plan, look)[0]
