"""The verdicts as the report and the claims board show them (docs/verdicts.md): the columns
they read from the verdict tables, each metric named in words from the data, each interval
headed by its own level, and the metrics that coincide in every run.

The report and the board show each claim as :func:`verdicts.claim_summary` gives it
(:data:`verdicts.SUMMARY_COLUMNS`) and each pair as :data:`PAIR_COLUMNS` of the verdict table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from glow_repro.analysis.verdicts import claim_summary, claims_of, level_text, number, run_metric
from glow_repro.run.rundir import RunState
from glow_repro.study.spec import METRIC_ALIASES
from glow_repro.study.tables import Tables

#: Per pair: the paired test on the claim's own metric.
PAIR_COLUMNS = ["claim", "within", "pair", "pair_verdict", "effect", "ci_low", "ci_high", "level", "p", "threshold",
                "seeds", "mde", "seeds_needed"]  # fmt: skip

#: Which variance the seeds sample, said once for the report and the board (docs/verdicts.md).
SEED_VARIANCE = (
    "A seed fixes the initialisation, the data order and the dequantisation noise; the test subset is one "
    "fixed set of images, so the intervals cover seed-to-seed variation only, not test-set sampling."
)


def threshold_text(threshold: float) -> str:
    """A p threshold to three significant digits (0.0125 stays 0.0125); ``-`` when there is none."""
    return f"{threshold:.3g}" if pd.notna(threshold) else "-"


def interval_column(frame: pd.DataFrame, what: str = "effect") -> tuple[str, list[str]]:
    """Header and cells of ``effect [ci_low, ci_high]`` at each row's ``level``: the header
    names the level when every row shares one (``effect [98.4 % CI]``), else each cell does; a
    pair of one seed has no interval, a study without verdicts not even an effect (``-``)."""
    cells = [number(e) + (f" [{number(lo)}, {number(hi)}]" if pd.notna(lo) else "")
             for e, lo, hi in zip(frame["effect"], frame["ci_low"], frame["ci_high"])]  # fmt: skip
    levels = frame["level"].dropna().unique()
    if len(levels) == 1:
        return f"{what} [{level_text(levels[0])} CI]", cells
    if len(levels) == 0:
        return f"{what} [CI]", cells
    return f"{what} [CI at its level]", [
        f"{cell} at {level_text(level)}" if pd.notna(level) else cell for cell, level in zip(cells, frame["level"])
    ]


def _steps_text(steps: pd.Series) -> str:
    """The evaluation steps of each run (tuples), in words: the same for every run, or their range."""
    if steps.empty:
        return "no evaluation of a finished run"
    runs = set(steps)
    if len(runs) > 1:
        every = [step for run in runs for step in run]
        return f"steps {min(every)} to {max(every)}, differing between runs"
    (one,) = runs
    shown = [str(s) for s in one] if len(one) <= 6 else [str(one[0]), str(one[1]), "…", str(one[-1])]
    more = f"; {len(one)} evaluations" if len(one) > 6 else ""
    return f"step{'s' * (len(one) > 1)} {', '.join(shown)}{more}"


def metric_label(metric: str, last_evals: int, evals: pd.DataFrame, finals: pd.DataFrame) -> str:
    """A claim's metric in words, with the evaluation steps it reads in the finished runs
    (docs/verdicts.md, "Metrics"), e.g. ``mean test bpd of the last 3 evaluations (steps 200,
    300, 400)``."""
    if metric == "diverged":
        return "share of runs that diverged (of those that finished or diverged)"
    done = finals.loc[finals["state"] == RunState.DONE, "run_id"]
    ordered = evals[evals["run_id"].isin(done)].dropna(subset=["test_bpd"]).sort_values("step")
    steps = ordered.groupby("run_id")["step"]
    if metric == "final_test_bpd":
        return f"test bpd of the last evaluation ({_steps_text(steps.apply(lambda s: tuple(s.tail(1))))})"
    if metric == "best_test_bpd":
        return f"lowest test bpd of any evaluation ({_steps_text(steps.apply(tuple))})"
    if METRIC_ALIASES.get(metric, metric) == "mean_test_bpd_of_last_evals":
        last = f"the last {last_evals} evaluations" if last_evals > 1 else "the last evaluation"
        return f"mean test bpd of {last} ({_steps_text(steps.apply(lambda s: tuple(s.tail(last_evals))))})"
    return metric


def claim_labels(tables: Tables, rows: pd.DataFrame) -> list[str]:
    """:func:`metric_label` of each row's ``claim`` and ``metric``, at that claim's ``last_evals``."""
    last = {claim.id: claim.last_evals for claim in claims_of(tables.study)}
    return [metric_label(m, last[c], tables.evals, tables.finals) for c, m in zip(rows["claim"], rows["metric"])]


def claim_rows(verdicts: pd.DataFrame, tables: Tables) -> pd.DataFrame:
    """One row per claim (:data:`verdicts.SUMMARY_COLUMNS`, then ``metric_label``: the metric in words)."""
    rows = claim_summary(verdicts)
    return rows.assign(metric_label=claim_labels(tables, rows))


def pair_rows(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of every claim (:data:`PAIR_COLUMNS`)."""
    return verdicts[PAIR_COLUMNS]


def coinciding_metrics(tables: Tables, metrics: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(claim, metric) -> the metric it equals in every run`` for each row of the metrics
    table (``claim``, ``metric``, ``declared``) that repeats another of its claim
    (docs/verdicts.md, "Metrics"); the claim's declared metric is the one kept, else the first."""
    claims = {claim.id: claim for claim in claims_of(tables.study)}
    repeats = {}
    for claim, rows in metrics.sort_values("declared", ascending=False, kind="stable").groupby("claim", sort=False):
        kept: dict[str, np.ndarray] = {}
        for metric in rows["metric"]:
            value = run_metric(tables.finals, tables.evals, claims[claim].model_copy(update={"metric": metric}))
            same = next((k for k, v in kept.items() if np.array_equal(v, value.to_numpy(), equal_nan=True)), None)
            if same is None:
                kept[metric] = value.to_numpy()
            else:
                repeats[(claim, metric)] = same
    return repeats


def ci_text(low: float, high: float, level: float) -> str:
    """An interval for running text after its estimate, naming its level: `` [98.4 % CI 0.040,
    0.096]``; empty when there is none (one seed)."""
    if pd.isna(low):
        return ""
    return f" [{level_text(level) + ' ' if pd.notna(level) else ''}CI {number(low)}, {number(high)}]"
