"""The verdicts as the report shows them (docs/verdicts.md): intervals headed by the level they
were judged at, metrics named in words from the evaluations, metrics that repeat another left
out. Verdict tables are built here with the columns of the verdict interface directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glow_repro.analysis.claim_view import (
    PAIR_COLUMNS,
    ci_text,
    coinciding_metrics,
    interval_column,
    metric_label,
)
from glow_repro.analysis.report_tables import claims_table, pairs_table
from glow_repro.analysis.verdicts import SUMMARY_COLUMNS
from glow_repro.study.tables import load_tables
from tests.test_tables import make_fake_study


def claim_row(**fields) -> dict:
    """One claim as ``claim_summary`` gives it, plus its metric in words."""
    row = {
        "claim": "permutation-order", "source": "Glow, Figure 3", "verdict": "reproduced",
        "outcome": "5 of 6 pairs reproduced; 1 absent (additive: shuffle < reverse)",
        "metric": "mean_test_bpd_of_last_evals", "resolved": 6, "pairs": 6,
        "weakest": "shuffle < reverse (coupling=additive)", "effect": 0.068, "ci_low": 0.04, "ci_high": 0.096,
        "level": 0.984, "p": 0.0031, "threshold": 0.016, "min_effect": 0.02, "seeds": 8, "seeds_needed": np.nan,
        "boundary": "O'Brien-Fleming spending, looks at 4/8/12 seeds",
        "metric_label": "mean test bpd of the last 3 evaluations (steps 200, 300, 400)",
    }  # fmt: skip
    assert set(SUMMARY_COLUMNS) <= set(row)
    return {**row, **fields}


def test_the_claims_table_heads_the_interval_with_its_level_and_shows_the_threshold():
    table = claims_table(pd.DataFrame([claim_row()]))
    assert "effect [98.4 % CI]" in table.columns and not any("95" in c for c in table.columns)
    row = table.iloc[0]
    assert row["effect [98.4 % CI]"] == "0.068 [0.040, 0.096]"
    assert (row["p"], row["p threshold"], row["min effect"]) == ("0.003", "0.016", "0.020")
    assert row["outcome"] == "5 of 6 pairs reproduced; 1 absent (additive: shuffle < reverse)"
    assert row["metric"] == "mean test bpd of the last 3 evaluations (steps 200, 300, 400)"


def test_intervals_at_different_levels_each_name_their_own():
    rows = pd.DataFrame([claim_row(), claim_row(claim="b", level=0.99, effect=0.5, ci_low=0.4, ci_high=0.6)])
    header, cells = interval_column(rows)
    assert header == "effect [CI at its level]"
    assert cells == ["0.068 [0.040, 0.096] at 98.4 %", "0.500 [0.400, 0.600] at 99 %"]
    one_seed = pd.DataFrame([claim_row(ci_low=np.nan, ci_high=np.nan)])
    assert interval_column(one_seed) == ("effect [98.4 % CI]", ["0.068"])
    assert ci_text(0.04, 0.096, 0.984) == " [98.4 % CI 0.040, 0.096]" and ci_text(np.nan, np.nan, 0.984) == ""


def test_the_pair_table_is_the_paired_test_with_each_pairs_verdict_and_threshold():
    pairs = pd.DataFrame([{
        "claim": "permutation-order", "within": "coupling=additive", "pair": "shuffle < reverse",
        "pair_verdict": "absent", "effect": 0.004, "ci_low": -0.01, "ci_high": 0.018, "level": 0.9875,
        "p": 0.41, "threshold": 0.0125, "seeds": 8, "mde": 0.03, "seeds_needed": np.inf,
    }])  # fmt: skip
    assert list(pairs.columns) == PAIR_COLUMNS
    (row,) = pairs_table(pairs).to_dict("records")
    assert row["pair verdict"] == "absent" and row["effect [98.75 % CI]"] == "0.004 [-0.010, 0.018]"
    assert (row["p"], row["p threshold"], row["seeds needed"]) == ("0.410", "0.0125", "more than 1000")


def evals_of(steps: dict[str, list[int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [{"run_id": run, "step": s, "test_bpd": 5.0 - s / 1000} for run, ss in steps.items() for s in ss]
    finals = pd.DataFrame({"run_id": list(steps), "state": ["done"] * len(steps)})
    return pd.DataFrame(rows), finals


@pytest.mark.parametrize(("metric", "expected"), [
    ("mean_test_bpd_of_last_evals", "mean test bpd of the last 3 evaluations (steps 200, 300, 400)"),
    ("mean_last_evals", "mean test bpd of the last 3 evaluations (steps 200, 300, 400)"),
    ("final_test_bpd", "test bpd of the last evaluation (step 400)"),
    ("best_test_bpd", "lowest test bpd of any evaluation (steps 0, 100, 200, 300, 400)"),
    ("diverged", "share of runs that diverged (of those that finished or diverged)"),
])  # fmt: skip
def test_a_metric_is_named_by_what_it_reads_in_the_evaluations(metric, expected):
    evals, finals = evals_of({"a": [0, 100, 200, 300, 400], "b": [0, 100, 200, 300, 400]})
    assert metric_label(metric, 3, evals, finals) == expected


def test_a_metric_label_reads_only_finished_runs_and_says_when_their_steps_differ():
    evals, finals = evals_of({"a": [0, 100, 200], "b": [0, 150, 300], "c": [0, 50]})
    finals.loc[finals["run_id"] == "c", "state"] = "diverged"
    assert metric_label("final_test_bpd", 3, evals, finals) == (
        "test bpd of the last evaluation (steps 200 to 300, differing between runs)"
    )
    assert metric_label("mean_last_evals", 1, evals, finals).startswith("mean test bpd of the last evaluation (")
    many, finals = evals_of({"a": list(range(0, 1001, 100))})
    assert metric_label("best_test_bpd", 3, many, finals) == (
        "lowest test bpd of any evaluation (steps 0, 100, …, 1000; 11 evaluations)"
    )


METRICS = pd.DataFrame({
    "claim": ["permutation-order"] * 3,
    "metric": ["final_test_bpd", "best_test_bpd", "mean_test_bpd_of_last_evals"],
    "declared": [False, True, False],
})  # fmt: skip


def test_a_metric_equal_to_another_in_every_run_is_named_once_keeping_the_declared_one(tmp_path: Path):
    tables = load_tables(make_fake_study(tmp_path))  # the test bpd only falls: best = final in every run
    assert coinciding_metrics(tables, METRICS) == {("permutation-order", "final_test_bpd"): "best_test_bpd"}
    undeclared = METRICS.assign(declared=[False, False, True])
    assert coinciding_metrics(tables, undeclared) == {("permutation-order", "best_test_bpd"): "final_test_bpd"}
    first = tables.finals.index[tables.finals["state"] == "done"][0]
    tables.finals.loc[first, "best_test_bpd"] -= 0.5  # one run's best came earlier
    assert coinciding_metrics(tables, METRICS) == {}
