"""Aggregates over seeds against numbers computed by hand from their formulas.

Quantiles with a closed form are written out: Student t with 1 degree of freedom is the
Cauchy (``t = tan(pi (q - 1/2))``), with 2 degrees of freedom ``t = sqrt(2 a^2 / (1 - a^2))``
where ``a = 2q - 1``. Only where no closed form exists (Welch's fractional df) is scipy's t
distribution used, on a statistic and df computed here by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from glow_repro.analysis.aggregate import (
    curves,
    divergence,
    factor_effects,
    holm,
    pairwise,
    ranking,
    t_interval,
    time_to_threshold,
    variant_summary,
    wilson_interval,
)

T_975_DF1 = math.tan(math.pi * 0.475)  # 12.706...
T_975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3027...
Z_975 = 1.959963984540054


def finals_frame(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run_id": f"{v}-{s}",
                "variant": v,
                "seed": s,
                "state": st,
                "final_test_bpd": b,
                "best_test_bpd": b - 0.05,
                "n_params": 10,
                "wall_time": 60.0,
            }
            for v, s, st, b in rows
        ]
    )


@pytest.fixture
def finals() -> pd.DataFrame:
    return finals_frame([
        ("A", 0, "done", 3.0), ("A", 1, "done", 3.1), ("A", 2, "done", 3.2),
        ("B", 0, "done", 3.3), ("B", 1, "done", 3.5), ("B", 2, "diverged", np.nan), ("B", 3, "failed", np.nan),
    ])  # fmt: skip


def test_t_interval_matches_the_textbook_formula() -> None:
    row = t_interval([3.0, 3.1, 3.2, np.nan, np.inf])  # non-finite values are left out
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(3.1)
    assert row["std"] == pytest.approx(0.1)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((3.1 - half, 3.1 + half))
    assert math.isnan(t_interval([3.0])["ci_low"])  # one seed: no interval


def test_variant_summary_counts_states_and_uses_finished_runs_only(finals: pd.DataFrame) -> None:
    summary = variant_summary(finals).set_index("variant")
    b = summary.loc["B"]
    assert (b["n_runs"], b["n_done"], b["n_diverged"], b["n_failed"]) == (4, 2, 1, 1)
    assert b["final_mean"] == pytest.approx(3.4)
    half = T_975_DF1 * math.sqrt(0.02) / math.sqrt(2)
    assert (b["final_ci_low"], b["final_ci_high"]) == pytest.approx((3.4 - half, 3.4 + half))
    assert summary.loc["A", "best_mean"] == pytest.approx(3.05)
    assert list(summary.index) == ["A", "B"]


def test_divergence_rate_has_a_wilson_interval(finals: pd.DataFrame) -> None:
    row = divergence(finals).set_index("variant").loc["B"]
    n, p = 3, 1 / 3  # the failed run is not a trial
    centre = (p + Z_975**2 / (2 * n)) / (1 + Z_975**2 / n)
    half = Z_975 / (1 + Z_975**2 / n) * math.sqrt(p * (1 - p) / n + Z_975**2 / (4 * n**2))
    assert (row["n"], row["n_diverged"], row["rate"]) == (3, 1, pytest.approx(1 / 3))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((centre - half, centre + half))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))  # nothing to count


def test_welch_comparison_by_hand(finals: pd.DataFrame) -> None:
    row = pairwise(finals).iloc[0]
    va, vb = 0.01 / 3, 0.02 / 2  # variance of each mean
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    t = (3.1 - 3.4) / se
    half = stats.t.ppf(0.975, df) * se
    assert (row["a"], row["b"], row["n_a"], row["n_b"]) == ("A", "B", 3, 2)
    assert row["diff"] == pytest.approx(-0.3)
    assert row["t"] == pytest.approx(t)
    assert row["df"] == pytest.approx(df)
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.3 - half, -0.3 + half))
    assert row["test"] == "Welch t-test"


def test_paired_comparison_uses_shared_seeds(finals: pd.DataFrame) -> None:
    row = pairwise(finals, paired=True).iloc[0]
    diffs = [3.0 - 3.3, 3.1 - 3.5]  # seeds 0 and 1 are in both variants
    sd = math.sqrt(((diffs[0] + 0.35) ** 2 + (diffs[1] + 0.35) ** 2) / 1)
    assert row["diff"] == pytest.approx(-0.35)
    assert row["t"] == pytest.approx(-0.35 / (sd / math.sqrt(2)))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.35 - T_975_DF1 * sd / math.sqrt(2),
                                                             -0.35 + T_975_DF1 * sd / math.sqrt(2)))  # fmt: skip
    assert row["test"] == "paired t-test over seeds"


def test_holm_adjustment_by_hand() -> None:
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> max with previous = 0.06
    adjusted = holm([0.01, 0.04, np.nan, 0.03])
    assert adjusted[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[2])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_ranking_marks_only_significant_differences() -> None:
    finals = finals_frame([(v, s, "done", base + 0.1 * s) for v, base in (("C", 2.0), ("A", 1.0), ("A2", 1.05))
                           for s in range(3)])  # fmt: skip
    pairs = pairwise(finals)
    ranked = ranking(variant_summary(finals), pairs).set_index("variant")
    assert list(ranked.index) == ["A", "A2", "C"]
    assert ranked.loc["A", "significantly_better_than"] == "C"
    assert ranked.loc["A", "not_distinguishable_from"] == "A2"
    assert ranked.loc["C", "significantly_better_than"] == ""
    # A vs C: t = -1 / sqrt(2 * 0.01 / 3) with df 4; three pairs in the Holm family
    p = 2 * stats.t.sf(1 / math.sqrt(2 * 0.01 / 3), 4)
    row = pairs[(pairs["a"] == "C") & (pairs["b"] == "A")].iloc[0]
    assert row["p_holm"] == pytest.approx(min(1, 3 * p))
    assert bool(row["significant"])


def test_curves_mean_and_interval_at_every_step() -> None:
    evals = pd.DataFrame({
        "run_id": ["r1", "r1", "r2", "r2"], "variant": "A", "step": [0, 100, 0, 100],
        "epoch": [0.0, 1.0, 0.0, 1.0], "test_bpd": [5.0, 2.0, 5.0, 2.2],
    })  # fmt: skip
    out = curves(evals).set_index("step")
    assert list(out["n"]) == [2, 2]
    assert out.loc[100, "mean"] == pytest.approx(2.1)
    half = T_975_DF1 * math.sqrt(0.02) / math.sqrt(2)
    assert (out.loc[100, "ci_low"], out.loc[100, "ci_high"]) == pytest.approx((2.1 - half, 2.1 + half))
    assert out.loc[0, "std"] == 0 and out.loc[0, "ci_low"] == 5.0


def test_time_to_threshold_takes_the_first_eval_at_or_below_it() -> None:
    evals = pd.DataFrame({
        "run_id": ["r1"] * 4 + ["r2"] * 2 + ["r3"] * 2, "variant": "A",
        "step": [0, 100, 200, 300, 0, 100, 0, 100],
        "wall_time": [0, 10, 20, 30, 0, 12, 0, 10],
        "test_bpd": [5, 3, 2.4, 2.2, 5, 2.5, 5, 3],
    })  # fmt: skip
    row = time_to_threshold(evals, 2.5).iloc[0]
    assert (row["n_runs"], row["n_reached"]) == (3, 2)
    assert row["steps_mean"] == pytest.approx(150)
    assert row["wall_time_mean"] == pytest.approx(16)
    half = T_975_DF1 * math.sqrt(2 * 50**2) / math.sqrt(2)  # steps 200 and 100
    assert row["steps_ci_high"] == pytest.approx(150 + half)


def test_factor_effects_report_level_order_and_consistency() -> None:
    cells = {("x", "p"): 1.0, ("x", "q"): 2.0, ("y", "p"): 3.0, ("y", "q"): 1.5}
    finals = pd.DataFrame([{"k1": a, "k2": b, "state": "done", "final_test_bpd": v + d}
                           for (a, b), v in cells.items() for d in (-0.1, 0.1)])  # fmt: skip
    effects = factor_effects(finals, ["k1", "k2"]).set_index("key")
    assert effects.loc["k1", "order"] == ["x", "y"]  # 1.5 vs 2.25
    assert effects.loc["k1", "means"] == pytest.approx({"x": 1.5, "y": 2.25})
    assert (effects.loc["k1", "consistent"], effects.loc["k1", "cells"]) == (1, 2)
    assert effects.loc["k2", "order"] == ["q", "p"]  # 1.75 vs 2.0
    assert (effects.loc["k2", "consistent"], effects.loc["k2", "cells"]) == (1, 2)


def test_one_variant_has_no_pairs_and_no_factor_effects() -> None:
    finals = finals_frame([("A", 0, "done", 3.0), ("A", 1, "done", 3.2)])
    pairs = pairwise(finals)
    assert pairs.empty and "p_holm" in pairs and "significant" in pairs
    assert factor_effects(finals, []).empty  # nothing swept: no key to order
    ranked = ranking(variant_summary(finals), pairs)
    assert ranked[["rank", "variant", "not_distinguishable_from"]].values.tolist() == [[1, "A", ""]]


def test_time_to_threshold_of_no_evaluations_keeps_its_columns() -> None:
    evals = pd.DataFrame(columns=["run_id", "variant", "seed", "step", "test_bpd", "wall_time"])
    reached = time_to_threshold(evals, float("nan"))
    assert reached.empty and {"variant", "n_runs", "n_reached", "steps_mean", "wall_time_mean"} <= set(reached)
