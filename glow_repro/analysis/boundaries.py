"""Group-sequential boundaries by alpha spending (docs/verdicts.md, "Adding seeds").

A study that adds seeds while its claims are unresolved judges them at *looks* planned in
advance, at ``n_1 < n_2 < ... < n_K`` seeds. A spending function says how much of the two-sided
``alpha`` may have been used by each look, as a function of the information fraction
``t_k = n_k / n_K`` (Lan & DeMets 1983):

- O'Brien-Fleming type: ``alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))``: very strict early,
  close to ``alpha`` at the last look (the default);
- Pocock type: ``alpha(t) = alpha ln(1 + (e - 1) t)``: about the same level at every look.

For the paired t-test the joint law of the t statistics at the looks under the null does not
depend on the unknown spread (the statistic is scale-free), so the boundary is exact up to the
simulation that computes it: :data:`PATHS` standard normal paths of seed differences, one per
simulated study, and at each look the critical ``|t|`` that makes the share of paths crossing
for the first time equal to that look's increment of ``alpha(t)``. The size of the boundary so
found differs from ``alpha`` by simulation error only, about ``sqrt(alpha (1 - alpha) / PATHS)``
(0.0003 at alpha 0.05). The critical values are given as nominal two-sided p thresholds.

Tests whose null law is not that of t (the exact sign-flip test of divergence claims) use the
increments of ``alpha(t)`` themselves as per-look levels: by the union bound their chance of
ever rejecting a true null is at most ``alpha`` (conservative, never above).

A one-look plan is a fixed design: its threshold is ``alpha`` itself.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Spending = Literal["obrien-fleming", "pocock"]
SPENDING_NAMES: dict[str, str] = {"obrien-fleming": "O'Brien-Fleming", "pocock": "Pocock"}
#: Simulated null studies behind every paired-t boundary.
PATHS = 400_000
#: The simulation's seed: a boundary is a function of the plan alone.
SIMULATION_SEED = 1807_03039


def spent(fraction: np.ndarray, alpha: float, spending: Spending) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``fraction`` (Lan-DeMets)."""
    t = np.clip(np.asarray(fraction, dtype=float), 0.0, 1.0)
    if spending == "pocock":
        return alpha * np.log1p((np.e - 1.0) * t)
    with np.errstate(divide="ignore"):
        z = stats.norm.isf(alpha / 2) / np.sqrt(t)
    return 2.0 * stats.norm.sf(z)


@dataclass(frozen=True)
class Boundary:
    """Per-look nominal two-sided p thresholds for looks at ``looks`` seeds at overall
    two-sided ``alpha``: ``alpha / 2`` in each direction."""

    looks: tuple[int, ...]
    alpha: float = 0.05
    spending: Spending = "obrien-fleming"

    def __post_init__(self) -> None:
        if not self.looks or list(self.looks) != sorted(set(self.looks)) or self.looks[0] < 1:
            raise ValueError(f"looks must be increasing positive seed counts (got {self.looks})")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1) (got {self.alpha})")

    @property
    def cumulative(self) -> tuple[float, ...]:
        """Alpha spent by each look."""
        if len(self.looks) == 1:
            return (self.alpha,)
        fractions = np.asarray(self.looks, dtype=float) / self.looks[-1]
        return tuple(float(a) for a in spent(fractions, self.alpha, self.spending))

    def t_thresholds(self) -> tuple[float, ...]:
        """Nominal two-sided p thresholds of the paired t-test at each look (simulated)."""
        if len(self.looks) == 1:
            return (self.alpha,)
        return _t_thresholds(self.looks, self.cumulative)

    def increment_thresholds(self) -> tuple[float, ...]:
        """Per-look levels from the spending increments (valid for any exact test)."""
        cumulative = (0.0, *self.cumulative)
        return tuple(later - earlier for earlier, later in itertools.pairwise(cumulative))

    def thresholds(self, test: str) -> tuple[float, ...]:
        """The thresholds for ``test``: ``t`` (simulated) or any other (increments)."""
        return self.t_thresholds() if test == "t" else self.increment_thresholds()

    def scaled(self, share: float) -> Boundary:
        """The same plan at ``alpha * share`` (the steps of Holm's method)."""
        return Boundary(self.looks, self.alpha * share, self.spending)

    def describe(self) -> str:
        seeds = "/".join(map(str, self.looks))
        if len(self.looks) == 1:
            return f"fixed {seeds} seeds"
        return f"{SPENDING_NAMES[self.spending]} spending, looks at {seeds} seeds"


@functools.lru_cache(maxsize=512)
def _t_thresholds(looks: tuple[int, ...], cumulative: tuple[float, ...]) -> tuple[float, ...]:
    """Simulate :data:`PATHS` null studies and find each look's critical ``|t|``."""
    rng = np.random.default_rng(SIMULATION_SEED)
    paths = rng.standard_normal((PATHS, looks[-1]))
    sums, squares = np.cumsum(paths, axis=1), np.cumsum(paths**2, axis=1)
    alive = np.ones(PATHS, dtype=bool)
    thresholds, spent_before = [], 0.0
    for n, spent_by in zip(looks, cumulative):
        crossings = round((spent_by - spent_before) * PATHS)
        spent_before = spent_by
        if n < 2 or crossings <= 0:
            thresholds.append(0.0)
            continue
        mean = sums[:, n - 1] / n
        sd = np.sqrt(np.maximum(squares[:, n - 1] - n * mean**2, 0.0) / (n - 1))
        t = np.abs(mean) / (sd / np.sqrt(n))
        candidates = np.sort(t[alive])[::-1]
        critical = candidates[min(crossings, len(candidates) - 1)]
        alive &= t <= critical
        thresholds.append(float(2 * stats.t.sf(critical, n - 1)))
    return tuple(thresholds)
