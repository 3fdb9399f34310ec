"""Per-variant statistics over seeds: pure pandas/scipy, no torch.

Conventions, stated once and repeated in the report:

- Confidence intervals are two-sided 95 % Student-t intervals of the mean over seeds
  (``mean +- t_{0.975, n-1} * std / sqrt(n)``, ``std`` with ``ddof=1``); one seed gives none.
- Final and best test bpd are taken over the runs that finished (``state == "done"``); runs
  that diverged count in the divergence rate instead, failed runs (crashes) in neither.
- Divergence rates carry a 95 % Wilson score interval.
- Pairwise comparisons of final bpd use Welch's unequal-variance t-test by default (or a
  paired t-test over shared seeds), and the family of all pairs is corrected with Holm's
  step-down method; "significant" means Holm-adjusted p < ``alpha``.

Every function takes a long DataFrame from :mod:`glow_repro.study.tables` and a ``keys``
tuple (``("variant", *swept)``) to group by; groups keep the tables' (grid) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from glow_repro.run.rundir import RunState

CONFIDENCE = 0.95
KEYS = ("variant",)


def t_interval(values: Sequence[float] | pd.Series, confidence: float = CONFIDENCE) -> pd.Series:
    """``n``, ``mean``, ``std``, ``ci_low``, ``ci_high`` of the finite values (t interval)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = x.mean() if n else np.nan
    std = x.std(ddof=1) if n > 1 else np.nan
    if n < 2:
        low = high = np.nan
    elif std == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / np.sqrt(n))
    return pd.Series({"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high})


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; NaNs when there are no trials."""
    if trials == 0:
        return (np.nan, np.nan)
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN p-values are left out of the family)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def _groups(frame: pd.DataFrame, keys: Sequence[str]):
    return frame.groupby(list(keys), sort=False, dropna=False)


def curves(evals: pd.DataFrame, keys: Sequence[str] = KEYS, value: str = "test_bpd") -> pd.DataFrame:
    """Mean, std and t interval of ``value`` over seeds at every eval step, per variant.

    ``epoch`` is the mean epoch of the step (runs of one variant share a batch size).
    """
    rows = []
    for group, frame in _groups(evals, [*keys, "step"]):
        stats_row = t_interval(frame[value])
        rows.append({**dict(zip([*keys, "step"], group)), "epoch": frame["epoch"].mean(), **stats_row})
    out = pd.DataFrame(rows, columns=[*keys, "step", "epoch", "n", "mean", "std", "ci_low", "ci_high"])
    return out.astype({"n": int})


def done_runs(finals: pd.DataFrame) -> pd.DataFrame:
    """Runs that finished training (not diverged, failed, or still running)."""
    return finals[finals["state"] == RunState.DONE]


def variant_summary(finals: pd.DataFrame, keys: Sequence[str] = KEYS) -> pd.DataFrame:
    """Per variant: run counts by state, final and best test bpd of the finished runs with CIs."""
    rows = []
    for group, frame in _groups(finals, keys):
        done = done_runs(frame)
        final = t_interval(done["final_test_bpd"])
        best = t_interval(done["best_test_bpd"])
        rows.append({
            **dict(zip(keys, group)),
            "n_runs": len(frame),
            "n_done": len(done),
            "n_diverged": int((frame["state"] == RunState.DIVERGED).sum()),
            "n_failed": int((frame["state"] == RunState.FAILED).sum()),
            "final_mean": final["mean"], "final_std": final["std"],
            "final_ci_low": final["ci_low"], "final_ci_high": final["ci_high"],
            "best_mean": best["mean"], "best_ci_low": best["ci_low"], "best_ci_high": best["ci_high"],
            "n_params": frame["n_params"].dropna().iloc[0] if frame["n_params"].notna().any() else np.nan,
            "wall_time_mean": pd.to_numeric(done["wall_time"], errors="coerce").mean(),
        })  # fmt: skip
    return pd.DataFrame(rows)


def divergence(finals: pd.DataFrame, keys: Sequence[str] = KEYS) -> pd.DataFrame:
    """Per variant: diverged / (done + diverged) with a Wilson interval."""
    rows = []
    for group, frame in _groups(finals, keys):
        diverged = int((frame["state"] == RunState.DIVERGED).sum())
        trials = diverged + int((frame["state"] == RunState.DONE).sum())
        low, high = wilson_interval(diverged, trials)
        rate = diverged / trials if trials else np.nan
        rows.append({**dict(zip(keys, group)), "n": trials, "n_diverged": diverged,
                     "rate": rate, "ci_low": low, "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


def time_to_threshold(evals: pd.DataFrame, threshold: float, keys: Sequence[str] = KEYS) -> pd.DataFrame:
    """Per variant: how many runs reached ``test_bpd <= threshold``, and the first step and
    wall time at which they did (mean and t interval over the runs that reached it)."""
    columns = [*keys, "threshold", "n_runs", "n_reached", "steps_mean", "steps_ci_low", "steps_ci_high",
               "wall_time_mean", "wall_time_ci_low", "wall_time_ci_high"]  # fmt: skip
    rows = []
    for group, frame in _groups(evals, keys):
        reached = frame[frame["test_bpd"] <= threshold].sort_values("step").groupby("run_id", sort=False).first()
        steps, wall = t_interval(reached["step"]), t_interval(reached["wall_time"])
        rows.append({
            **dict(zip(keys, group)), "threshold": threshold,
            "n_runs": frame["run_id"].nunique(), "n_reached": len(reached),
            "steps_mean": steps["mean"], "steps_ci_low": steps["ci_low"], "steps_ci_high": steps["ci_high"],
            "wall_time_mean": wall["mean"], "wall_time_ci_low": wall["ci_low"], "wall_time_ci_high": wall["ci_high"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _compare(a: pd.DataFrame, b: pd.DataFrame, paired: bool) -> dict[str, float]:
    if paired:
        both = a.merge(b, on="seed", suffixes=("_a", "_b"))
        x, y = both["final_test_bpd_a"].to_numpy(float), both["final_test_bpd_b"].to_numpy(float)
        if len(x) < 2:
            return {"n_a": len(x), "n_b": len(y), "diff": np.nan}
        result = stats.ttest_rel(x, y)
        df = len(x) - 1
    else:
        x, y = a["final_test_bpd"].to_numpy(float), b["final_test_bpd"].to_numpy(float)
        if len(x) < 2 or len(y) < 2:
            return {"n_a": len(x), "n_b": len(y), "diff": x.mean() - y.mean() if len(x) and len(y) else np.nan}
        result = stats.ttest_ind(x, y, equal_var=False)
        df = result.df
    ci = result.confidence_interval(CONFIDENCE)
    return {"n_a": len(x), "n_b": len(y), "diff": x.mean() - y.mean(), "ci_low": ci.low, "ci_high": ci.high,
            "t": result.statistic, "df": float(df), "p_value": result.pvalue}  # fmt: skip


def pairwise(finals: pd.DataFrame, paired: bool = False, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of variants: difference of mean final bpd (a - b) with its 95 % CI, the
    t-test (Welch, or paired by seed), and Holm-adjusted p-values over all pairs."""
    done = done_runs(finals)
    done = done[np.isfinite(done["final_test_bpd"].astype(float))]
    variants = list(dict.fromkeys(finals["variant"]))
    rows = []
    for a, b in combinations(variants, 2):
        sample_a = done[done["variant"] == a][["seed", "final_test_bpd"]]
        sample_b = done[done["variant"] == b][["seed", "final_test_bpd"]]
        rows.append({"a": a, "b": b, **_compare(sample_a, sample_b, paired)})
    columns = ["a", "b", "n_a", "n_b", "diff", "ci_low", "ci_high", "t", "df", "p_value"]
    out = pd.DataFrame(rows).reindex(columns=columns)
    out["p_holm"] = holm(out["p_value"])
    out["significant"] = out["p_holm"] < alpha
    out["test"] = "paired t-test over seeds" if paired else "Welch t-test"
    return out


def ranking(summary: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Variants from lowest to highest mean final bpd, each with the variants it beats and
    the variants it cannot be told apart from (Holm-corrected, see :func:`pairwise`)."""
    ranked = summary.dropna(subset=["final_mean"]).sort_values("final_mean", kind="stable")
    rows = []
    for rank, (_, row) in enumerate(ranked.iterrows(), start=1):
        beats, ties = [], []
        for other in ranked["variant"]:
            if other == row["variant"]:
                continue
            pair = pairs[((pairs["a"] == row["variant"]) & (pairs["b"] == other))
                         | ((pairs["a"] == other) & (pairs["b"] == row["variant"]))]  # fmt: skip
            significant = bool(pair["significant"].iloc[0]) if len(pair) else False
            lower = row["final_mean"] < ranked.loc[ranked["variant"] == other, "final_mean"].iloc[0]
            if significant and lower:
                beats.append(other)
            elif not significant:
                ties.append(other)
        rows.append({"rank": rank, "variant": row["variant"], "final_mean": row["final_mean"],
                     "final_ci_low": row["final_ci_low"], "final_ci_high": row["final_ci_high"],
                     "n_done": row["n_done"], "significantly_better_than": "; ".join(beats),
                     "not_distinguishable_from": "; ".join(ties)})  # fmt: skip
    return pd.DataFrame(rows)


def factor_effects(finals: pd.DataFrame, swept: Sequence[str]) -> pd.DataFrame:
    """For each swept key: its levels' mean final bpd, averaged over the cells of the other
    swept keys (each cell's seed mean weighs equally), and in how many of those cells the
    levels fall in that same order.

    Columns: ``key``, ``order`` (best level first), ``means`` (level -> mean),
    ``consistent`` (cells with the same order) and ``cells`` (cells with every level).
    """
    columns = ["key", "order", "means", "consistent", "cells"]
    if not swept:
        return pd.DataFrame(columns=columns)
    done = done_runs(finals)
    cell_means = done.groupby(list(swept), sort=False, dropna=False)["final_test_bpd"].mean().reset_index()
    rows = []
    for key in swept:
        others = [k for k in swept if k != key]
        if cell_means[key].nunique() < 2:
            continue
        level_means = cell_means.groupby(key, sort=False)["final_test_bpd"].mean().sort_values(kind="stable")
        order = list(level_means.index)
        consistent = cells = 0
        blocks = cell_means.groupby(others, sort=False, dropna=False) if others else [((), cell_means)]
        for _, block in blocks:
            if block[key].nunique() != len(order):
                continue
            cells += 1
            consistent += list(block.sort_values("final_test_bpd", kind="stable")[key]) == order
        rows.append({"key": key, "order": order, "means": level_means.to_dict(),
                     "consistent": consistent, "cells": cells})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
