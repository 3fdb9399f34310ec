"""The tests on seed-matched differences behind every verdict, and their power
(docs/verdicts.md, "The tests").

Everything here works on arrays whose last axis is the seeds (NaN: a seed without a value), so
the same functions judge one study and simulate thousands of them.

- ``t``: the paired t-test (``scipy.stats.ttest_1samp``); order claims.
- ``sign-flip``: the exact permutation test of the mean difference under random signs (each
  seed's difference is equally likely to be positive or negative when nothing differs);
  divergence claims, whose per-seed scores take few values. Exact by enumeration of all
  ``2^n`` sign patterns up to :data:`EXACT_FLIPS_UP_TO` seeds, beyond that
  :data:`RANDOM_FLIPS` random patterns (a valid Monte Carlo p).
- ``wilcoxon``: the same permutation test on signed midranks (Wilcoxon's signed-rank test,
  exact with ties and zeros dropped).

Power and seeds needed are those of the paired t-test (statsmodels' ``TTestPower``); for the
sign-flip tests they are the t approximation on the scores.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestPower

POWER = 0.8
#: Seeds-needed estimates stop here: "more than 1000 seeds" is the answer beyond it.
MAX_SEEDS_NEEDED = 1000
EXACT_FLIPS_UP_TO = 16
RANDOM_FLIPS = 1 << 16


def paired_tests(differences: np.ndarray, test: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effect (mean), SD and two-sided p of seed differences along the last axis; a p that
    cannot be computed (fewer than 2 seeds, no spread for the t-test) is 1."""
    d = np.asarray(differences, dtype=float)
    n = np.isfinite(d).sum(axis=-1)
    with warnings.catch_warnings():  # no seeds, or identical differences: NaN or 0, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        effect = np.nanmean(d, axis=-1) if d.shape[-1] else np.full(d.shape[:-1], np.nan)
        sd = np.nanstd(d, axis=-1, ddof=1) if d.shape[-1] > 1 else np.full(d.shape[:-1], np.nan)
        if test == "t":
            p = stats.ttest_1samp(d, 0.0, axis=-1, nan_policy="omit").pvalue
        else:
            p = sign_flip_p(signed_ranks(d) if test == "wilcoxon" else d)
    p = np.where(np.isfinite(p) & (n >= 2), p, 1.0)
    return effect, sd, np.asarray(p, dtype=float)


def one_sided_t_p(differences: np.ndarray, shift: float, alternative: Literal["less", "greater"]) -> np.ndarray:
    """One-sided p of the paired t-test of mean ``shift`` (``less``: mean < shift)."""
    d = np.asarray(differences, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_1samp(d - shift, 0.0, axis=-1, nan_policy="omit", alternative=alternative).pvalue
    return np.where(np.isfinite(p) & (np.isfinite(d).sum(axis=-1) >= 2), p, 1.0)


def equivalence_p(differences: np.ndarray, bound: float) -> np.ndarray:
    """Two one-sided t-tests (TOST) of ``|mean| < bound``: the larger of the two p."""
    return np.maximum(one_sided_t_p(differences, bound, "less"), one_sided_t_p(differences, -bound, "greater"))


def signed_ranks(differences: np.ndarray) -> np.ndarray:
    """Each difference replaced by its sign times the midrank of its size among the nonzero
    ones (zeros and missing seeds become 0)."""
    d = np.nan_to_num(np.asarray(differences, dtype=float))
    zeros = (d == 0).sum(axis=-1, keepdims=True)
    ranks = stats.rankdata(np.abs(d), axis=-1) - zeros  # zeros take the lowest ranks
    return np.where(d == 0, 0.0, np.sign(d) * ranks)


def _sign_patterns(n: int) -> np.ndarray:
    if n <= EXACT_FLIPS_UP_TO:
        bits = (np.arange(1 << n)[:, None] >> np.arange(n)) & 1
    else:
        bits = np.random.default_rng(n).integers(0, 2, size=(RANDOM_FLIPS, n))
    return 1.0 - 2.0 * bits


def sign_flip_p(differences: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Two-sided p of the sign-flip permutation test of the sum (missing seeds count as 0):
    the share of sign patterns whose ``|sum|`` reaches the observed one."""
    d = np.nan_to_num(np.asarray(differences, dtype=float))
    flat = d.reshape(-1, d.shape[-1])
    patterns = _sign_patterns(d.shape[-1])
    exact = d.shape[-1] <= EXACT_FLIPS_UP_TO
    p = np.empty(len(flat))
    for start in range(0, len(flat), chunk):
        block = flat[start : start + chunk]
        observed = np.abs(block.sum(axis=-1, keepdims=True))
        sums = np.abs(np.abs(block) @ patterns.T)
        reach = (sums >= observed - 1e-9 * (1 + observed)).sum(axis=-1)
        p[start : start + chunk] = reach / len(patterns) if exact else (reach + 1) / (len(patterns) + 1)
    return p.reshape(d.shape[:-1])


def t_interval(differences: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided t interval of the mean at confidence ``level`` (NaN below 2 seeds)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return np.nan, np.nan
    if not np.std(d) > 0:
        return float(np.mean(d)), float(np.mean(d))
    low, high = stats.t.interval(level, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    return float(low), float(high)


def step_down(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Holm's step-down rejections of each family (last axis) of two-sided ``p``:
    ``thresholds[j - 1]`` is the level for ``j`` hypotheses left (alpha / j in a fixed design,
    the boundary at alpha / j in a sequential one). The smallest p is tested at the level for
    all ``m``, the next at ``m - 1``, ..., stopping at the first that fails."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    levels = np.asarray(thresholds, dtype=float)[m - 1 - np.arange(m)]
    passed = np.cumprod(ranked <= levels, axis=-1).astype(bool)
    rejected = np.empty_like(passed)
    np.put_along_axis(rejected, order, passed, axis=-1)
    return rejected


def paired_t_power(dz: np.ndarray, n: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Power of the two-sided paired t-test with standardised effect ``dz`` at ``n`` seeds
    and level ``alpha`` (one for all, or one per ``n``): both tails of the noncentral t (as statsmodels' ``TTestPower``). The
    far tail underflows to NaN in scipy for large noncentralities; it is then 0."""
    n = np.asarray(n, dtype=float)
    df = n - 1
    crit = stats.t.isf(alpha / 2, df)
    nc = np.abs(dz) * np.sqrt(n)
    return stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0)


def seeds_needed_t(dz: np.ndarray, alpha: float, power: float = POWER, cap: int = MAX_SEEDS_NEEDED) -> np.ndarray:
    """Fewest seeds (>= 2) at which the paired t-test at level ``alpha`` detects ``dz`` with
    ``power``; ``inf`` when ``cap`` seeds are not enough (or ``dz`` is 0), NaN when ``dz`` is
    NaN. Vectorised bisection over the seed count (power grows with it)."""
    dz = np.abs(np.asarray(dz, dtype=float))
    low = np.full(dz.shape, 1.0)  # power(low) < target (n = 1 has no test)
    high = np.full(dz.shape, float(cap))
    enough = paired_t_power(dz, high, alpha) >= power
    while np.any(high - low > 1):
        middle = np.floor((low + high) / 2)
        reached = paired_t_power(dz, middle, alpha) >= power
        high = np.where(reached, middle, high)
        low = np.where(reached, low, middle)
    return np.where(np.isnan(dz), np.nan, np.where(enough, high, np.inf))


def detectable_dz(n: int, alpha: float, power: float = POWER) -> float:
    """Smallest standardised effect the paired t-test at level ``alpha`` detects with
    ``power`` at ``n`` seeds (statsmodels' ``TTestPower``); NaN below 2 seeds."""
    if n < 2 or not alpha > 0:
        return np.nan
    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power))
