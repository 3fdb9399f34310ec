"""Claims with a margin (docs/verdicts.md, "Claims with a margin"): "class is not worse than
none by more than m bpd" is a paired test of d = bpd(none) - bpd(class) against -m, on
synthetic finals tables with known per-seed differences."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from glow_repro.analysis.claim_view import claim_rows
from glow_repro.analysis.pair_tests import MAX_SEEDS_NEEDED, seeds_needed_t
from glow_repro.analysis.prose import claimed_order_clause, verdict_sentences
from glow_repro.analysis.verdicts import claim_summary, verdicts
from glow_repro.core.config import ConfigError
from glow_repro.study.spec import ClaimSpec, expand, load_study
from tests.test_spec import study, write

KEY = "model.conditioning"
NO_EVALS = pd.DataFrame(columns=["run_id", "seed", "step", "test_bpd"])
MARGIN = 0.02


def claim(margin: float | None = MARGIN) -> ClaimSpec:
    return ClaimSpec(id="no-worse", source="issue text", key=KEY, order=["class", "none"], margin=margin)


def finals(differences: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """bpd(class) = 5 + a per-seed offset shared by both variants; bpd(none) = that + d."""
    offsets = np.random.default_rng(seed).normal(0, 1.0, len(differences))
    rows = []
    for s, (offset, d) in enumerate(zip(offsets, differences)):
        for value, bpd in (("class", 5 + offset), ("none", 5 + offset + d)):
            rows.append({"run_id": f"{value}-{s}", "variant": value, "seed": s, KEY: value, "state": "done",
                         "final_test_bpd": bpd})  # fmt: skip
    return pd.DataFrame(rows)


def differences(mean: float, sd: float, seeds: int, seed: int = 0) -> np.ndarray:
    """``seeds`` differences with exactly this mean and sample SD."""
    z = np.random.default_rng(seed + 1).normal(size=seeds)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def judge(d: np.ndarray, margin: float | None = MARGIN) -> pd.Series:
    (row,) = verdicts(finals(d), NO_EVALS, [claim(margin)], [KEY]).itertuples()
    return row


def test_slightly_worse_within_the_margin_is_reproduced_and_would_be_contradicted_without_it():
    d = differences(-0.005, 0.002, seeds=6)  # class worse by 0.005 bpd, well inside 0.02
    row = judge(d)
    assert row.verdict == "reproduced" and row.pair == "class < none + 0.02" and row.margin == MARGIN
    assert row.effect == pytest.approx(-0.005) and row.ci_low > -MARGIN
    assert row.p == pytest.approx(stats.ttest_1samp(d, -MARGIN).pvalue)
    plain = judge(d, margin=None)
    assert plain.verdict == "contradicted" and plain.pair == "class < none" and plain.margin == 0
    (summary,) = claim_summary(verdicts(finals(d), NO_EVALS, [claim()], [KEY])).itertuples()
    assert summary.resolved == 1 and summary.verdict == "reproduced"


def test_worse_by_more_than_the_margin_is_contradicted():
    row = judge(differences(-0.05, 0.005, seeds=6))
    assert row.verdict == "contradicted" and row.ci_high < -MARGIN and row.p < 0.05


def test_borderline_is_inconclusive_and_sized_at_zero_true_difference():
    """A non-inferiority claim's seeds needed assume no true difference (d = 0, so d + m = m);
    the observed-effect figure is kept beside it, labelled as such."""
    d = differences(-0.019, 0.01, seeds=4)  # 0.001 bpd from the margin, SD 0.01
    row = judge(d)
    assert row.verdict == "inconclusive" and row.pair_verdict == "open" and row.ci_low < -MARGIN < row.ci_high
    expected = math.ceil(TTestPower().solve_power(effect_size=MARGIN / row.sd, nobs=None, alpha=0.05, power=0.8))
    assert row.seeds_needed == expected
    assert row.seeds_needed_observed == seeds_needed_t(np.array(abs(row.effect + MARGIN) / row.sd), 0.05)
    assert row.mde == pytest.approx(TTestPower().solve_power(effect_size=None, nobs=4, alpha=0.05, power=0.8) * 0.01)
    assert np.isnan(row.p_equivalence)  # no absent verdict for a claim with a margin


@pytest.mark.parametrize("mean, sd", [(-0.012, 0.01), (-0.005, 0.004), (-0.03, 0.015)])
def test_seeds_needed_agrees_with_statsmodels_at_the_margin(mean, sd):
    row = judge(differences(mean, sd, seeds=5))
    if row.pair_verdict != "open":
        assert np.isnan(row.seeds_needed)
        return
    expected = math.ceil(TTestPower().solve_power(effect_size=MARGIN / sd, nobs=None, alpha=0.05, power=0.8))
    assert row.seeds_needed == (expected if expected <= MAX_SEEDS_NEEDED else np.inf)


def test_the_verdict_is_where_the_95_ci_of_d_lies_against_minus_the_margin():
    """One pair: Holm changes nothing, so reproduced <=> CI above -m, contradicted <=> below."""
    rng = np.random.default_rng(5)
    seen = set()
    for trial in range(40):
        row = judge(differences(rng.uniform(-0.05, 0.01), rng.uniform(0.002, 0.02), seeds=5, seed=trial))
        expected = ("reproduced" if row.ci_low > -MARGIN else
                    "contradicted" if row.ci_high < -MARGIN else "inconclusive")  # fmt: skip
        assert row.verdict == expected, row
        seen.add(row.verdict)
    assert seen == {"reproduced", "contradicted", "inconclusive"}


GRID = {KEY: ["none", "class"]}


def spec_claim(**fields) -> dict:
    return {"id": "no-worse", "source": "s", "key": KEY, "order": ["class", "none"], **fields}


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"margin": -0.01}, "claims.0.margin: Input should be greater than or equal to 0"),
        ({"margin": 0.02, "kind": "divergence"}, "claims.0.margin: a margin (bpd) applies to kind: order claims only"),
        ({"margin": "a lot"}, "claims.0.margin: Input should be a valid number"),
    ],
)
def test_a_bad_margin_is_one_line_naming_file_and_key(tmp_path, fields, expected):
    path = write(tmp_path, study(grid=GRID, claims=[spec_claim(**fields)]), "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: {expected}") and "\n" not in str(err.value)


def test_a_margin_loads_and_changes_no_run_id(tmp_path):
    plain = expand(load_study(write(tmp_path, study(grid=GRID), "plain.yaml")))
    spec = load_study(write(tmp_path, study(grid=GRID, claims=[spec_claim(margin=0.02)]), "margin.yaml"))
    assert spec.claims[0].margin == 0.02
    assert [r.run_id for r in expand(spec)] == [r.run_id for r in plain]


def analysis_of(d: np.ndarray) -> SimpleNamespace:
    """What :func:`verdict_sentences` reads of a report's analysis, for the claim on ``d``."""
    tables = SimpleNamespace(study={"claims": [claim().model_dump()]}, finals=finals(d), evals=NO_EVALS)
    table = verdicts(tables.finals, NO_EVALS, [claim()], [KEY])
    return SimpleNamespace(tables=tables, verdicts=table, claims=claim_rows(table, tables))


def test_the_report_states_the_margin_and_what_went_against_it():
    (sentence,) = verdict_sentences(analysis_of(differences(-0.05, 0.005, seeds=6)))
    assert "class < none, or worse by at most 0.02 bpd, in the test bpd of the last evaluation" in sentence
    assert ": **contradicted**" in sentence
    assert "0 of 1 pair reproduced; 1 contradicted (class < none + 0.02)" in sentence
    within = analysis_of(differences(-0.005, 0.002, seeds=6))
    assert "**reproduced**, 1 of 1 pair reproduced" in verdict_sentences(within)[0]


def test_a_claim_with_a_margin_is_not_read_as_an_order_of_the_means():
    assert claimed_order_clause([claim()], KEY, ["none", "class"]) == ""
    assert "does not hold" in claimed_order_clause([claim(margin=None)], KEY, ["none", "class"])
