"""A verdict per claim of a study: reproduced, contradicted or inconclusive, with its power
(docs/verdicts.md).

A claim (:class:`glow_repro.study.spec.ClaimSpec`) orders values of one swept key. It implies
one *pair* (claimed-better, claimed-worse) for every two values of its order, at every
combination of its ``within`` keys' values. Each pair is tested on seed-matched differences
(a seed fixes the data order and the dequantisation noise across variants); swept keys in
neither ``key`` nor ``within`` are averaged within each seed, so the seed stays the unit.

- ``kind: order``: the difference is metric(worse) - metric(better) in bits per dimension,
  over runs that finished (``state == "done"``); two-sided paired t-test
  (``scipy.stats.ttest_1samp`` on the differences), 95 % t interval.
- ``kind: divergence``: the difference is diverged(worse) - diverged(better) (0/1 per run,
  over runs that finished or diverged); exact two-sided sign test on the seeds whose
  difference is not zero (``scipy.stats.binomtest``; McNemar's exact test when each seed
  gives one pair), 95 % t interval of the mean difference (approximate for 0/1 outcomes).

``effect`` is positive in the claimed direction. An order claim with a ``margin`` m (bpd)
claims only that the better value is not worse by more than m (non-inferiority): its pairs are
tested on d + m, so a pair is resolved for the claim when d > -m significantly and against it
when d < -m significantly; ``effect`` and its CI stay those of d, ``margin`` is m (0 without
one) and the power columns are those of the shifted effect ``effect + margin``. The claim's
pairs are one family, corrected with Holm's step-down method at ``alpha``:

- **reproduced**: every pair is significant with a positive effect;
- **contradicted**: some pair is significant with a negative effect;
- **inconclusive**: otherwise; then ``mde`` (the smallest effect the seeds run detect with
  80 % power) and ``seeds_needed`` (the seeds that would detect the observed effect with
  80 % power; ``inf`` beyond :data:`MAX_SEEDS_NEEDED`) say why in numbers.
  ``seeds_needed_best_case`` is the same at the end of the 95 % CI farthest from zero, the
  largest effect the data do not rule out (for divergence claims, the exact upper bound of
  the rate of seeds going the more frequent way, the other rate as observed). All
  are computed at the Bonferroni level ``alpha / pairs``, the strictest step of Holm's method.

Pure functions of the long tables of :mod:`glow_repro.study.tables`; no torch.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.power import TTestPower

from glow_repro.rundir import JsonlLog, RunState
from glow_repro.study.labels import describe, format_value
from glow_repro.study.runner import DECISIONS, TABLES
from glow_repro.study.spec import CLAIM_METRICS, ClaimSpec
from glow_repro.study.tables import Tables, load_tables, write_frame

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
#: Seeds-needed estimates stop here: "more than 1000 seeds" is the answer beyond it.
MAX_SEEDS_NEEDED = 1000
COLUMNS = [
    "claim",
    "source",
    "kind",
    "metric",
    "verdict",
    "within",
    "pair",
    "margin",
    "effect",
    "sd",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "significant",
    "seeds",
    "mde",
    "seeds_needed",
    "seeds_needed_best_case",
    "alpha",
]


def claims_of(study: dict[str, Any]) -> list[ClaimSpec]:
    """The claims of a parsed ``study.yaml`` (validated when the study was loaded)."""
    return [ClaimSpec.model_validate(raw) for raw in study.get("claims") or []]


def study_verdicts(tables: Tables, alpha: float = ALPHA) -> pd.DataFrame:
    """:func:`verdicts` of the claims in the tables' ``study.yaml``."""
    return verdicts(tables.finals, tables.evals, claims_of(tables.study), tables.swept, alpha)


def metric_alternatives(tables: Tables, alpha: float = ALPHA) -> pd.DataFrame:
    """Every ``order`` claim of the study judged again under each metric (docs/verdicts.md,
    "Metrics"): its verdict, pairs resolved and median paired SD; ``declared`` marks the
    claim's own metric."""
    rows = []
    for claim in claims_of(tables.study):
        if claim.kind != "order":
            continue
        for metric in CLAIM_METRICS:
            table = verdicts(tables.finals, tables.evals, [claim.model_copy(update={"metric": metric})],
                             tables.swept, alpha)  # fmt: skip
            if table.empty:
                continue
            summary = claim_summary(table).iloc[0]
            rows.append({
                "claim": claim.id, "metric": metric, "declared": metric == claim.metric, "verdict": summary["verdict"],
                "resolved": f"{summary['resolved']} / {summary['pairs']}", "median_sd": float(table["sd"].median()),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["claim", "metric", "declared", "verdict", "resolved", "median_sd"])


def recorded_alpha(results_dir: str | Path) -> float:
    """The per-look alpha of the last ``--until-resolved`` decision in the results directory
    (seeds added by looking at the data are judged at that level), else :data:`ALPHA`."""
    rows = JsonlLog(Path(results_dir) / DECISIONS).read()
    return float(rows[-1]["alpha"]) if rows else ALPHA


def write_verdicts(results_dir: str | Path) -> pd.DataFrame:
    """The verdicts of a results directory at :func:`recorded_alpha`, also written as
    ``tables/verdicts.parquet`` and ``.csv`` when the study declares claims."""
    tables = load_tables(results_dir)
    table = study_verdicts(tables, recorded_alpha(results_dir))
    if tables.study.get("claims"):
        write_frame(table, Path(results_dir) / TABLES, "verdicts")
    return table


def run_metric(finals: pd.DataFrame, evals: pd.DataFrame, claim: ClaimSpec) -> pd.Series:
    """The claim's per-run value, indexed like ``finals``; NaN where the run does not count."""
    state = finals["state"]
    if claim.kind == "divergence":
        return (state == RunState.DIVERGED).astype(float).where(state.isin([RunState.DONE, RunState.DIVERGED]))
    if claim.metric == "mean_last_evals":
        tail = evals.dropna(subset=["test_bpd"]).sort_values("step").groupby("run_id").tail(claim.last_evals)
        value = finals["run_id"].map(tail.groupby("run_id")["test_bpd"].mean())
    else:
        value = pd.to_numeric(finals[claim.metric], errors="coerce")
    return value.astype(float).where((state == RunState.DONE) & np.isfinite(value.astype(float)))


def seed_differences(
    finals: pd.DataFrame, value: pd.Series, key: str, better: Any, worse: Any, pooled: Sequence[str]
) -> pd.Series:
    """value(worse) - value(better) per seed, matched on the ``pooled`` keys and averaged
    over them; seeds missing either side are left out (all of them when the tables hold
    one value of ``key`` only, e.g. after ``--only``)."""
    if key not in finals:
        return pd.Series(dtype=float)
    label = finals[key].map(format_value)
    frame = finals.assign(_value=value, _side=label.map({format_value(better): "better", format_value(worse): "worse"}))
    frame = frame.dropna(subset=["_side"])
    index = ["seed", *pooled]
    wide = frame.pivot_table(index=index, columns="_side", values="_value", aggfunc="mean", dropna=False)
    if not {"better", "worse"} <= set(wide.columns):
        return pd.Series(dtype=float)
    diff = (wide["worse"] - wide["better"]).dropna()
    return diff.groupby(level="seed").mean()


def paired_tests(differences: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effect (mean), SD and two-sided p of seed differences along the last axis (NaNs are
    missing seeds); a p that cannot be computed is 1. Vectorised for simulations."""
    d = np.asarray(differences, dtype=float)
    n = np.isfinite(d).sum(axis=-1)
    with warnings.catch_warnings():  # no seeds, or identical differences: NaN or 0, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        effect = np.nanmean(d, axis=-1) if d.shape[-1] else np.full(d.shape[:-1], np.nan)
        sd = np.nanstd(d, axis=-1, ddof=1) if d.shape[-1] > 1 else np.full(d.shape[:-1], np.nan)
        if kind == "divergence":
            plus, minus = (d > 0).sum(axis=-1), (d < 0).sum(axis=-1)
            p = _sign_test_p(plus, plus + minus)
        else:
            p = stats.ttest_1samp(d, 0.0, axis=-1, nan_policy="omit").pvalue
    p = np.where(np.isfinite(p) & (n >= 2), p, 1.0)
    return effect, sd, np.asarray(p, dtype=float)


def _sign_test_p(plus: np.ndarray, discordant: np.ndarray) -> np.ndarray:
    """Exact two-sided binomial p (success rate 1/2) of ``plus`` out of ``discordant``."""
    plus, discordant = np.broadcast_arrays(np.asarray(plus), np.asarray(discordant))
    p = [stats.binomtest(int(k), int(n)).pvalue if n else 1.0 for k, n in zip(plus.ravel(), discordant.ravel())]
    return np.asarray(p, dtype=float).reshape(plus.shape)


def holm_adjusted(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values of each family (the last axis): the k-th smallest of
    m is multiplied by m - k + 1, capped at 1, then made non-decreasing in that order.
    Vectorised (``statsmodels.stats.multitest.multipletests`` takes one family per call,
    too slow for simulating thousands of studies; the tests check the two agree)."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    scaled = np.minimum(1.0, ranked * (m - np.arange(m)))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.maximum.accumulate(scaled, axis=-1), axis=-1)
    return adjusted


def holm_significant(p: np.ndarray, alpha: float) -> np.ndarray:
    """Which p-values of each family (the last axis) Holm's method rejects at ``alpha``."""
    return holm_adjusted(p) <= alpha


def claim_verdict(significant: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """reproduced / contradicted / inconclusive from each family's (last axis) significant
    pairs and their effects (positive = claimed direction)."""
    positive = significant & (effect > 0)
    negative = significant & (effect < 0)
    return np.where(
        negative.any(axis=-1), "contradicted", np.where(positive.all(axis=-1), "reproduced", "inconclusive")
    )


def paired_t_power(dz: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided one-sample (paired) t-test with standardised effect ``dz``
    at ``n`` seeds: both tails of the noncentral t (as statsmodels' ``TTestPower``). The far
    tail underflows to NaN in scipy for large noncentralities; it is then 0."""
    n = np.asarray(n, dtype=float)
    df = n - 1
    crit = stats.t.isf(alpha / 2, df)
    nc = np.abs(dz) * np.sqrt(n)
    return stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0)


def seeds_needed_t(dz: np.ndarray, alpha: float, power: float = POWER, cap: int = MAX_SEEDS_NEEDED) -> np.ndarray:
    """Fewest seeds (>= 2) at which the paired t-test detects ``dz`` with ``power``;
    ``inf`` when ``cap`` seeds are not enough (or ``dz`` is 0), NaN when ``dz`` is NaN.
    Vectorised bisection over the seed count (power grows with it)."""
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
    """Smallest standardised effect the paired t-test detects with ``power`` at ``n`` seeds
    (statsmodels' ``TTestPower``); NaN below 2 seeds."""
    if n < 2:
        return np.nan
    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power))


def sign_test_power(n: np.ndarray, plus: float, minus: float, alpha: float) -> np.ndarray:
    """Power of the exact two-sided sign test to reject in the ``plus`` direction at ``n``
    seeds, where a seed's difference is positive with probability ``plus`` and negative
    with ``minus``: the discordant count is binomial, and given ``k`` of them the test
    rejects when the positives reach the smallest count whose two-sided p is <= alpha."""
    n = np.atleast_1d(np.asarray(n, dtype=int))
    k = np.arange(n.max() + 1)
    critical = stats.binom.isf(alpha / 2, k, 0.5) + 1  # smallest count with 2 P(X >= c) <= alpha
    discordant = plus + minus
    share = plus / discordant if discordant > 0 else 0.5
    reject = stats.binom.sf(critical - 1, k, share)
    pmf = stats.binom.pmf(k[None, :], n[:, None], discordant)
    return pmf @ reject


def seeds_needed_sign(
    plus: float, minus: float, alpha: float, power: float = POWER, cap: int = MAX_SEEDS_NEEDED
) -> float:
    """Fewest seeds at which :func:`sign_test_power` reaches ``power`` in the more frequent
    direction (the test is symmetric); ``inf`` beyond ``cap`` or when neither is."""
    plus, minus = max(plus, minus), min(plus, minus)
    if plus == minus:
        return np.inf
    reached = np.flatnonzero(sign_test_power(np.arange(1, cap + 1), plus, minus, alpha) >= power)
    return float(reached[0] + 1) if len(reached) else np.inf


def detectable_rate(n: int, alpha: float, power: float = POWER) -> float:
    """Smallest difference in divergence rate (no seed the other way) the sign test detects
    with ``power`` at ``n`` seeds; ``inf`` when even a difference of 1 is not detectable."""
    if n < 1 or sign_test_power(n, 1.0, 0.0, alpha)[0] < power:
        return np.inf
    return float(optimize.brentq(lambda rate: sign_test_power(n, rate, 0.0, alpha)[0] - power, 1e-9, 1.0))


def _interval(d: np.ndarray) -> tuple[float, float]:
    if len(d) < 2 or not np.std(d) > 0:
        mean = float(np.mean(d)) if len(d) else np.nan
        return (mean, mean) if len(d) >= 2 else (np.nan, np.nan)
    low, high = stats.t.interval(CONFIDENCE, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    return float(low), float(high)


def best_case_dz(effect: np.ndarray, sd: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The standardised effect at the end of its 95 % t interval farthest from zero."""
    n = np.asarray(n, dtype=float)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / np.sqrt(n)
    return (np.abs(effect) + half) / sd


def _power_columns(
    claim: ClaimSpec, d: np.ndarray, effect: float, sd: float, alpha: float, resolved: bool
) -> tuple[float, float, float]:
    """(mde, seeds_needed, seeds_needed_best_case) of one pair at the pair's level ``alpha``;
    the seeds are NaN for a resolved pair (and while there are fewer than 2 seeds)."""
    n = len(d)
    if claim.kind == "divergence":
        mde = detectable_rate(n, alpha)
        if resolved or n < 1:
            return mde, np.nan, np.nan
        more, fewer = sorted([int((d > 0).sum()), int((d < 0).sum())], reverse=True)
        best = stats.binomtest(more, n).proportion_ci(CONFIDENCE, method="exact").high
        return mde, seeds_needed_sign(more / n, fewer / n, alpha), seeds_needed_sign(best, fewer / n, alpha)
    mde = detectable_dz(n, alpha) * sd if sd > 0 else np.nan
    if resolved or n < 2:
        return mde, np.nan, np.nan
    if not sd > 0:  # every seed gave the same difference, zero (a nonzero one is resolved)
        return mde, np.inf, np.inf
    needed = seeds_needed_t(np.array([abs(effect) / sd, best_case_dz(effect, sd, n)]), alpha)
    return mde, float(needed[0]), float(needed[1])


def claim_pairs(finals: pd.DataFrame, claim: ClaimSpec):
    """``(within label, better, worse, within filter)`` for every pair the claim implies."""
    within = [key for key in claim.within if key in finals]
    levels = [list(dict.fromkeys(finals[key].map(format_value))) for key in within]
    for point in itertools.product(*levels):
        mask = np.ones(len(finals), dtype=bool)
        for key, level in zip(within, point):
            mask &= (finals[key].map(format_value) == level).to_numpy()
        for better, worse in itertools.combinations(claim.order, 2):
            yield describe(dict(zip(within, point))) if within else "all", better, worse, mask


def verdicts(
    finals: pd.DataFrame, evals: pd.DataFrame, claims: Sequence[ClaimSpec], swept: Sequence[str], alpha: float = ALPHA
) -> pd.DataFrame:
    """One row per pair of every claim (columns :data:`COLUMNS`), the claim's verdict on each
    of its rows; see the module docstring."""
    rows: list[dict[str, Any]] = []
    for claim in claims:
        value = run_metric(finals, evals, claim)
        pooled = [key for key in swept if key in finals and key != claim.key and key not in claim.within]
        pairs = []
        for within, better, worse, mask in claim_pairs(finals, claim):
            d = seed_differences(finals[mask], value[mask], claim.key, better, worse, pooled).to_numpy(float)
            pairs.append((within, better, worse, d))
        if not pairs:
            continue
        width = max(len(d) for *_, d in pairs)
        padded = np.full((len(pairs), max(width, 1)), np.nan)
        for row, (*_, d) in enumerate(pairs):
            padded[row, : len(d)] = d
        margin = claim.margin or 0.0
        shifted, sd, p = paired_tests(padded + margin, claim.kind)
        significant = holm_significant(p, alpha)
        verdict = str(claim_verdict(significant, shifted))
        pair_alpha = alpha / len(pairs)
        for (within, better, worse, d), e, s, pv, ph, sig in zip(
                pairs, shifted, sd, p, holm_adjusted(p), significant):  # fmt: skip
            low, high = _interval(d)
            mde, needed, best = _power_columns(claim, d + margin, float(e), float(s), pair_alpha, bool(sig))
            rows.append({
                "claim": claim.id, "source": claim.source, "kind": claim.kind,
                "metric": "diverged" if claim.kind == "divergence" else claim.metric,
                "verdict": verdict, "within": within,
                "pair": pair_text(better, worse, claim.margin), "margin": margin,
                "effect": e - margin, "sd": s, "ci_low": low, "ci_high": high, "p": pv, "p_holm": ph, "significant": bool(sig),
                "seeds": len(d), "mde": mde, "seeds_needed": needed,
                "seeds_needed_best_case": best, "alpha": alpha,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def pair_text(better: Any, worse: Any, margin: float | None = None) -> str:
    """``better < worse``, or ``better < worse + margin`` for a claim with a margin."""
    return f"{format_value(better)} < {format_value(worse)}" + (f" + {margin:g}" if margin else "")


def shifted_effect(table: pd.DataFrame) -> pd.Series:
    """Each pair's effect against its claim's margin: positive where the data favour the claim."""
    return table["effect"] + table["margin"]


def number(value: float, digits: int = 3) -> str:
    """A statistic as text: ``-`` when missing, three significant digits when tiny."""
    return "-" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def seeds_text(value: float) -> str:
    """A seeds-needed estimate as text: ``-`` when there is none, ``more than N`` beyond the cap."""
    if pd.isna(value):
        return "-"
    return f"more than {MAX_SEEDS_NEEDED}" if np.isinf(value) else str(int(value))


def claim_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of a :func:`verdicts` table: its verdict, how many of its pairs are
    significant in the claimed direction, the weakest pair (the least resolved: highest Holm p,
    or the smallest effect when all are resolved) with its 95 % CI and Holm p, the fewest seeds
    of any pair, and the most seeds any unresolved pair needs."""
    rows = []
    for claim, pairs in table.groupby("claim", sort=False):
        unresolved = pairs[~(pairs["significant"] & (shifted_effect(pairs) > 0))]
        weakest = (unresolved.sort_values("p_holm", ascending=False, na_position="first").iloc[0] if len(unresolved)
                   else pairs.loc[shifted_effect(pairs).idxmin()])  # fmt: skip
        rows.append({
            "claim": claim, "source": pairs["source"].iloc[0], "verdict": pairs["verdict"].iloc[0],
            "metric": pairs["metric"].iloc[0],
            "resolved": int(len(pairs) - len(unresolved)), "pairs": len(pairs),
            "weakest": f"{weakest['pair']} ({weakest['within']})" if weakest["within"] != "all" else weakest["pair"],
            "effect": weakest["effect"], "ci_low": weakest["ci_low"], "ci_high": weakest["ci_high"],
            "p_holm": weakest["p_holm"], "seeds": int(pairs["seeds"].min()),
            "seeds_needed": unresolved["seeds_needed"].max() if len(unresolved) else np.nan,
        })  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=[
            "claim",
            "source",
            "verdict",
            "metric",
            "resolved",
            "pairs",
            "weakest",
            "effect",
            "ci_low",
            "ci_high",
            "p_holm",
            "seeds",
            "seeds_needed",
        ],
    )


def format_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict table as text for people: effect with its CI, p, seeds needed (or "more
    than N"), one row per pair."""
    return pd.DataFrame({
        "claim": table["claim"], "verdict": table["verdict"], "within": table["within"],
        "pair": table["pair"],
        "effect [95% CI]": [f"{number(e)} [{number(lo)}, {number(hi)}]"
                            for e, lo, hi in zip(table["effect"], table["ci_low"], table["ci_high"])],
        "p": table["p"].map(number), "p_holm": table["p_holm"].map(number),
        "seeds": table["seeds"].astype(str), "mde": table["mde"].map(lambda v: "none" if np.isinf(v) else number(v)),
        "seeds_needed": table["seeds_needed"].map(seeds_text), "metric": table["metric"],
    })  # fmt: skip
