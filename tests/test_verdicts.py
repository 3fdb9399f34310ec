"""Verdicts on claims (docs/verdicts.md): known effects on synthetic finals tables, power and
seeds needed against statsmodels, the sequential rule's error rates by simulation, and
``glow-repro run --until-resolved`` end to end with a fake training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from glow_repro.analysis.pair_tests import MAX_SEEDS_NEEDED, paired_tests, seeds_needed_t, sign_flip_p, step_down
from glow_repro.analysis.sequential import SeedJudge, SeedPlan, decide, recorded_look
from glow_repro.analysis.study_analysis import analyse
from glow_repro.analysis.verdicts import claim_summary, format_verdicts, verdicts
from glow_repro.cli import main
from glow_repro.core.config import ConfigError
from glow_repro.run.rundir import RunDir, atomic_write_json
from glow_repro.study.runner import StudyOptions, run_study
from glow_repro.study.spec import CLAIM_METRICS, ClaimSpec, load_study
from glow_repro.study.tables import load_tables
from tests.test_runner import fake_train

SWEPT = ["model.permutation", "model.coupling"]
PERMUTATIONS = ["reverse", "shuffle", "conv1x1"]
ORDER = ClaimSpec(
    id="permutation-order",
    source="Glow, Figure 3",
    key="model.permutation",
    order=["conv1x1", "shuffle", "reverse"],
    within=["model.coupling"],
)
NO_EVALS = pd.DataFrame(columns=["run_id", "seed", "step", "test_bpd"])


def finals_table(
    means: dict[str, float], seeds: int = 6, noise: float = 0.1, seed: int = 0, state: str = "done"
) -> pd.DataFrame:
    """Permutation x coupling finals: bpd = 5 + a per-seed offset shared by every variant (so
    pairing removes it) + the permutation's mean + independent noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        offset = rng.normal(0, 1.0)
        for coupling in ("additive", "affine"):
            for permutation in PERMUTATIONS:
                rows.append(
                    {
                        "run_id": f"{permutation}-{coupling}-{s}",
                        "variant": f"{permutation}, {coupling}",
                        "seed": s,
                        "model.permutation": permutation,
                        "model.coupling": coupling,
                        "state": state,
                        "best_test_bpd": 4.0,
                        "final_test_bpd": 5 + offset + means[permutation] + rng.normal(0, noise),
                    }
                )
    return pd.DataFrame(rows)


def test_a_clear_effect_in_the_claimed_order_is_reproduced():
    table = verdicts(finals_table({"conv1x1": 0.0, "shuffle": 0.5, "reverse": 1.0}), NO_EVALS, [ORDER], SWEPT)
    assert len(table) == 2 * 3 and set(table["verdict"]) == {"reproduced"}
    assert list(table["pair"][:3]) == ["conv1x1 < shuffle", "conv1x1 < reverse", "shuffle < reverse"]
    assert list(table["within"][:3]) == ["coupling=additive"] * 3
    assert np.allclose(table["effect"], [0.5, 1.0, 0.5] * 2, atol=0.15)
    assert (table["ci_low"] > 0).all() and (table["p"] < 0.05).all() and table["seeds_needed"].isna().all()
    assert set(table["pair_verdict"]) == {"reproduced"} and np.allclose(table["level"], 0.95)
    assert (table["seeds"] == 6).all()


def test_a_reversed_effect_is_contradicted_even_when_other_pairs_hold():
    table = verdicts(finals_table({"conv1x1": 0.0, "shuffle": 1.0, "reverse": 0.5}), NO_EVALS, [ORDER], SWEPT)
    assert set(table["verdict"]) == {"contradicted"}
    wrong = table[table["pair"] == "shuffle < reverse"]
    assert (wrong["effect"] < 0).all() and set(wrong["pair_verdict"]) == {"contradicted"}


def test_a_null_effect_is_inconclusive_and_says_how_many_seeds_it_would_take_at_min_effect():
    """Seeds needed are sized at the claim's smallest effect of interest (0.05 bpd by default)
    and the level the next look uses (alpha itself for a one-look study); the observed-effect
    figure is kept apart."""
    table = verdicts(finals_table({p: 0.0 for p in PERMUTATIONS}, seeds=5, noise=0.3), NO_EVALS, [ORDER], SWEPT)
    assert set(table["verdict"]) == {"inconclusive"} and (table["min_effect"] == 0.05).all()
    for row in table.itertuples():
        assert row.pair_verdict == "open"
        expected = math.ceil(TTestPower().solve_power(effect_size=0.05 / row.sd, nobs=None, alpha=0.05, power=0.8))
        assert row.seeds_needed == (expected if expected <= MAX_SEEDS_NEEDED else np.inf), row
        observed = seeds_needed_t(np.array(abs(row.effect) / row.sd), 0.05)
        assert row.seeds_needed_observed == observed
        mde = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8) * row.sd
        assert row.mde == pytest.approx(mde)
        assert row.ci_low < row.effect < row.ci_high
    shown = format_verdicts(table)
    assert set(shown["seeds_needed"]) <= {f"more than {MAX_SEEDS_NEEDED}"} | {str(i) for i in range(2, 1001)}


def test_a_tiny_true_effect_with_enough_seeds_is_absent_and_the_claim_says_which_pair():
    """shuffle = reverse exactly (a true zero) with a small spread: TOST at min_effect 0.05
    declares those pairs absent, the others reproduced, and the claim absent."""
    table = verdicts(finals_table({"conv1x1": 0.0, "shuffle": 0.5, "reverse": 0.5}, seeds=12, noise=0.01),
                     NO_EVALS, [ORDER], SWEPT)  # fmt: skip
    tiny = table[table["pair"] == "shuffle < reverse"]
    assert set(tiny["pair_verdict"]) == {"absent"} and (tiny["p_equivalence"] < 0.025).all()
    assert set(table.loc[table["pair"] != "shuffle < reverse", "pair_verdict"]) == {"reproduced"}
    assert set(table["verdict"]) == {"absent"}
    (summary,) = claim_summary(table).itertuples()
    assert summary.outcome == (
        "4 of 6 pairs reproduced; 2 absent (coupling=additive: shuffle < reverse, coupling=affine: shuffle < reverse)"
    )


def test_paired_t_statistics_match_scipy_on_the_seed_differences():
    finals = finals_table({"conv1x1": 0.0, "shuffle": 0.2, "reverse": 0.3}, seeds=4, noise=0.2)
    row = verdicts(finals, NO_EVALS, [ORDER], SWEPT).iloc[0]  # additive: conv1x1 < shuffle
    cell = finals[finals["model.coupling"] == "additive"].set_index(["model.permutation", "seed"])["final_test_bpd"]
    result = stats.ttest_rel(cell["shuffle"], cell["conv1x1"])
    assert row["p"] == pytest.approx(result.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(result.confidence_interval()))


def test_seeds_needed_agrees_with_statsmodels():
    effects = np.array([0.2, 0.35, 0.5, 0.8, 1.0, 1.5, 3.0])
    for alpha in (0.05, 0.05 / 6):
        ours = seeds_needed_t(effects, alpha)
        theirs = [
            math.ceil(TTestPower().solve_power(effect_size=e, nobs=None, alpha=alpha, power=0.8)) for e in effects
        ]
        assert list(ours) == theirs
    assert list(seeds_needed_t(np.array([0.0, 0.01]), 0.05)) == [np.inf, np.inf]


def test_step_down_at_alpha_over_j_is_holms_method():
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0, 0.06, (8, 4)), [[0.01, 0.01, 0.04, 1.0], [0.2, 0.01, 0.02, 0.03]]])
    levels = 0.05 / np.arange(1, 5)
    for row, rejected in zip(p, step_down(p, levels)):
        assert list(rejected) == list(multipletests(row, alpha=0.05, method="holm")[0])


def test_keys_outside_the_claim_are_averaged_within_each_seed():
    """The coupling claim pooled over permutations: one difference per seed, the mean over
    the permutation cells of that seed."""
    finals = finals_table({"conv1x1": 0.0, "shuffle": 0.2, "reverse": 0.4}, seeds=3)
    finals.loc[finals["model.coupling"] == "affine", "final_test_bpd"] -= 0.3
    claim = ClaimSpec(id="c", source="s", key="model.coupling", order=["affine", "additive"])
    row = verdicts(finals, NO_EVALS, [claim], SWEPT).iloc[0]
    wide = finals.pivot_table(index=["seed", "model.permutation"], columns="model.coupling", values="final_test_bpd")
    per_seed = (wide["additive"] - wide["affine"]).groupby(level="seed").mean()
    assert row["within"] == "all" and row["seeds"] == 3
    assert row["effect"] == pytest.approx(per_seed.mean()) and row["sd"] == pytest.approx(per_seed.std())


def test_metrics_last_evaluations_and_runs_that_did_not_finish():
    finals = finals_table({p: 0.0 for p in PERMUTATIONS}, seeds=3)
    evals = pd.DataFrame(
        [
            {"run_id": r, "seed": s, "step": step, "test_bpd": 9.0 - step / 100 + (p == "conv1x1") * -1}
            for r, s, p in zip(finals["run_id"], finals["seed"], finals["model.permutation"])
            for step in (0, 100, 200, 300)
        ]
    )
    claim = ORDER.model_copy(update={"metric": "mean_test_bpd_of_last_evals", "last_evals": 2})
    table = verdicts(finals, evals, [claim], SWEPT)
    assert table.loc[table["pair"] == "conv1x1 < shuffle", "effect"].tolist() == pytest.approx([1.0, 1.0])
    assert table.loc[table["pair"] == "shuffle < reverse", "effect"].tolist() == pytest.approx([0.0, 0.0])
    finals.loc[finals["run_id"] == "shuffle-additive-0", "state"] = "diverged"
    table = verdicts(finals, evals, [claim], SWEPT)
    assert (
        table.loc[(table["pair"] == "conv1x1 < shuffle") & (table["within"] == "coupling=additive"), "seeds"].item()
        == 2
    )


def test_a_claim_whose_values_were_not_run_is_inconclusive_with_no_seeds():
    finals = finals_table({p: 0.0 for p in PERMUTATIONS}, seeds=3)
    only_conv = finals[finals["model.permutation"] == "conv1x1"].drop(columns=["model.permutation"])
    table = verdicts(only_conv, NO_EVALS, [ORDER], ["model.coupling"])
    assert set(table["verdict"]) == {"inconclusive"} and (table["seeds"] == 0).all() and len(table) == 6


def divergence_finals(diverged: dict[tuple[str, float], list[bool]]) -> pd.DataFrame:
    rows = []
    for (scale, lr), flags in diverged.items():
        for seed, flag in enumerate(flags):
            rows.append(
                {
                    "run_id": f"{scale}-{lr}-{seed}",
                    "variant": f"{scale}, {lr}",
                    "seed": seed,
                    "model.scale": scale,
                    "train.lr": lr,
                    "state": "diverged" if flag else "done",
                    "final_test_bpd": np.nan if flag else 5.0,
                    "best_test_bpd": 5.0,
                }
            )
    return pd.DataFrame(rows)


def test_divergence_claims_use_the_exact_sign_flip_test_on_per_seed_scores():
    claim = ClaimSpec(
        id="exp-diverges-more", source="s", kind="divergence", key="model.scale", order=["sigmoid", "exp"]
    )
    assert claim.test == "sign-flip" and claim.smallest_effect == 0.25
    n = 10
    finals = divergence_finals(
        {
            ("sigmoid", 1e-3): [False] * n,
            ("exp", 1e-3): [True] * 8 + [False] * 2,
            ("sigmoid", 1e-2): [True] * n,
            ("exp", 1e-2): [True] * n,
        }
    )
    row = verdicts(finals, NO_EVALS, [claim], ["model.scale", "train.lr"]).iloc[0]
    # per seed, exp - sigmoid averaged over the two learning rates: 0.5 in 8 seeds, 0 in 2
    assert row["effect"] == pytest.approx(0.4) and row["seeds"] == n
    assert row["p"] == pytest.approx(2 / 2**8) and row["verdict"] == "reproduced"
    none = divergence_finals({("sigmoid", 1e-3): [False] * 3, ("exp", 1e-3): [False] * 3})
    row = verdicts(none, NO_EVALS, [claim], ["model.scale"]).iloc[0]
    assert row["verdict"] == "inconclusive" and row["p"] == 1.0 and np.isnan(row["p_equivalence"])


def test_the_scale_studys_scores_give_the_reference_p_values():
    """Per-seed scores consistent with the first scale study (7 seeds one way, 1 the other):
    exact sign-flip and Wilcoxon p 0.0312, where the sign test on the seeds gives 0.0703."""
    scores = np.array([-1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert sign_flip_p(scores) == pytest.approx(0.03125)
    assert stats.binomtest(7, 8).pvalue == pytest.approx(0.0703, abs=1e-4)
    assert sign_flip_p(scores) == pytest.approx(
        stats.permutation_test((scores,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    )
    assert paired_tests(scores, "wilcoxon")[2] == pytest.approx(0.03125)


def test_seed_plan_adds_the_studys_seed_count_at_each_look_after_its_largest_seed():
    plan = SeedPlan.extend([100, 102, 105], max_seeds=10)
    assert plan.looks == (3, 6, 9, 10) and plan.seeds == (100, 102, 105, 106, 107, 108, 109, 110, 111, 112)
    assert plan.seeds_at(1) == [100, 102, 105, 106, 107, 108]
    assert SeedPlan.extend([0, 1, 2], max_seeds=2).looks == (3,)
    assert plan.boundary.describe() == "O'Brien-Fleming spending, looks at 3/6/9/10 seeds"


PLAN = SeedPlan.extend([0, 1, 2], max_seeds=12)  # looks at 3, 6, 9, 12 seeds


def test_decide_on_a_table_agrees_with_the_look_thresholds():
    finals = finals_table({"conv1x1": 0.0, "shuffle": 0.1, "reverse": 0.2}, seeds=12, noise=1.0, seed=4)
    finals = finals[finals["model.coupling"] == "additive"]
    claim = ClaimSpec(id="c", source="s", key="model.permutation", order=["conv1x1", "shuffle", "reverse"])
    decision, table = decide(finals, NO_EVALS, [claim], SWEPT, PLAN, look=0)
    values = finals[finals["seed"] < 3].pivot(index="model.permutation", columns="seed", values="final_test_bpd")
    values = values.loc[["conv1x1", "shuffle", "reverse"]].to_numpy()
    diffs = np.stack([values[2] - values[1], values[1] - values[0]])  # reverse-shuffle, shuffle-conv
    assert table["p"].iloc[2] == pytest.approx(stats.ttest_1samp(diffs[0], 0).pvalue)
    threshold = PLAN.boundary.t_thresholds()[0]
    assert (table["threshold"] == threshold).all() and (table["level"] == 1 - threshold).all()
    assert decision.verdicts == {"c": "inconclusive"} and decision.action == "continue"
    assert decision.add_seeds == [3, 4, 5] and decision.seeds == 3
    record = decision.record()
    assert record.threshold == threshold and record.alpha_spent == pytest.approx(PLAN.boundary.cumulative[0])


# --- end to end: glow-repro run --until-resolved with a fake training --------------------


def effect_train(config, run_dir, **kwargs):
    """fake_train, with a final bpd of 5 - effect * (width == 16) + seeded noise, where the
    effect is the study's train.lr (1e-3 -> no effect, anything else -> 1 bpd)."""
    summary = fake_train(config, run_dir, **kwargs)
    noise = np.random.default_rng([config.seed, config.model.width]).normal(0, 0.01)
    effect = 0.0 if config.train.lr == 1e-3 else 1.0
    summary["final_test_bpd"] = 5.0 - effect * (config.model.width == 16) + noise
    atomic_write_json(RunDir(run_dir).summary_file, summary)
    return summary


def claim_study(tmp_path: Path, lr: float, claims: bool = True, **fields) -> Path:
    spec = {
        "name": "claims",
        "reference": "none",
        "base": {"data": {"dataset": "synthetic"}, "model": {"depth": 1, "levels": 1}, "train": {"steps": 2, "lr": lr}},
        "grid": {"model.width": [12, 16]},
        "seeds": [0, 1, 2],
        **fields,
    }
    if claims:
        spec["claims"] = [{"id": "wider-is-better", "source": "test", "key": "model.width", "order": [16, 12]}]
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def decisions(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "decisions.jsonl").read_text().splitlines()]


def test_until_resolved_stops_at_the_first_look_when_the_claim_is_clear(tmp_path):
    results = tmp_path / "results"
    report = run_study(
        claim_study(tmp_path, lr=2e-3),
        results,
        StudyOptions(launcher="inprocess", train_fn=effect_train),
        judge=SeedJudge(max_seeds=9),
    )
    (row,) = decisions(results)
    assert row["action"] == "stop" and row["reason"] == "every claim is resolved"
    assert row["verdicts"] == {"wider-is-better": "reproduced"} and row["looks"] == [3, 6, 9]
    assert row["threshold"] == pytest.approx(SeedPlan.extend([0, 1, 2], 9).boundary.t_thresholds()[0])
    assert report.counts["done"] == 6
    result = CliRunner().invoke(main, ["verdict", str(results)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "wider-is-better: REPRODUCED: 1 of 1 pair reproduced (test; O'Brien-Fleming spending, looks at 3/6/9 seeds"
    )


def test_until_resolved_adds_seeds_to_every_variant_then_says_why_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("glow_repro.study.launchers.execute._default_train", lambda: effect_train)
    results = tmp_path / "results"
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(claim_study(tmp_path, lr=1e-3)),
            "--results",
            str(results),
            "--launcher",
            "inprocess",
            "--until-resolved",
            "--max-seeds",
            "9",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = decisions(results)
    # no true effect and a spread of 0.014 bpd: open at 3 seeds, then absent (|effect| < 0.05)
    assert [row["seeds"] for row in rows] == [3, 6, 9][: len(rows)] and len(rows) > 1
    assert all(row["action"] == "continue" for row in rows[:-1]) and rows[-1]["action"] == "stop"
    assert all(row["verdicts"] == {"wider-is-better": "inconclusive"} for row in rows[:-1])
    assert rows[-1]["verdicts"] == {"wider-is-better": "absent"}
    for row in rows[:-1]:
        assert f"adding seeds {', '.join(map(str, range(row['seeds'], row['seeds'] + 3)))}" in row["reason"]
    runs = [RunDir(p) for p in (results / "runs").iterdir()]
    assert len(runs) == 2 * rows[-1]["seeds"] and all(r.status()["state"] == "done" for r in runs)
    assert f"look {len(rows)} of 3 ({rows[-1]['seeds']} seeds, paired-t threshold p <= " in result.output
    assert "wider-is-better: ABSENT" in result.output
    verdict_table = pd.read_csv(results / "tables" / "verdicts.csv")
    assert verdict_table["seeds"].tolist() == [rows[-1]["seeds"]]
    assert verdict_table["threshold"].tolist() == [pytest.approx(rows[-1]["threshold"])]
    again = CliRunner().invoke(main, ["run", str(claim_study(tmp_path, lr=1e-3)), "--results", str(results),
                                      "--launcher", "inprocess", "--until-resolved", "--max-seeds", "9"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert decisions(results) == rows  # a rerun after the last look adds no row


def timed_train(config, run_dir, **kwargs):
    """effect_train whose runs took 30 s of wall time each on 2 threads (width 16) or 3
    processes of 1 thread (width 12); width 12 with seed 0 records no environment.json."""
    summary = {**effect_train(config, run_dir, **kwargs), "wall_time": 30.0}
    atomic_write_json(RunDir(run_dir).summary_file, summary)
    if config.model.width == 16:
        atomic_write_json(RunDir(run_dir).environment, {"threads": 2, "world_size": 1})
    elif config.seed != 0:
        atomic_write_json(RunDir(run_dir).environment, {"threads": 1, "world_size": 3})
    return summary


def test_run_ends_with_its_time_to_a_verdict(tmp_path, monkeypatch):
    """Wall time of the command, CPU-minutes of the runs it trained (3 x 30 s x 2 threads +
    2 x 30 s x 3 processes = 6.0 minutes, the run without a thread count named), and the looks."""
    monkeypatch.setattr("glow_repro.study.launchers.execute._default_train", lambda: timed_train)
    once = ["run", str(claim_study(tmp_path, lr=2e-3)), "--launcher", "inprocess"]
    args = [*once, "--results", str(tmp_path / "results"), "--until-resolved", "--max-seeds", "9"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    last = first.output.rstrip().splitlines()[-1]
    assert re.fullmatch(
        r"time to verdict: 0m\d\ds wall, 6\.0 CPU-minutes in training \(1 trained run without a recorded "
        r"thread count left out\), 1 look \(3 seeds\)",
        last,
    ), last
    again = CliRunner().invoke(main, args)  # nothing left to train: no CPU spent, the same look
    assert again.output.rstrip().splitlines()[-1].endswith("s wall, 0.0 CPU-minutes in training, 1 look (3 seeds)")
    without_looks = CliRunner().invoke(main, [*once, "--results", str(tmp_path / "once")])
    assert without_looks.output.rstrip().endswith("6.0 CPU-minutes in training (1 trained run without a "
                                                  "recorded thread count left out)")  # fmt: skip


def test_the_report_judges_at_the_recorded_look_and_under_every_metric(tmp_path):
    results = tmp_path / "results"
    run_study(
        claim_study(tmp_path, lr=2e-3),
        results,
        StudyOptions(launcher="inprocess", train_fn=effect_train),
        judge=SeedJudge(9),
    )
    tables = load_tables(results)
    look, seeds = recorded_look(results)
    assert look.boundary.looks == (3, 6, 9) and look.index == 0 and seeds == [0, 1, 2]
    a = analyse(tables, look, seeds)
    assert a.verdicts["threshold"].tolist() == [pytest.approx(look.boundary.t_thresholds()[0])]
    assert a.metrics["metric"].tolist() == list(CLAIM_METRICS)
    assert a.metrics["declared"].tolist() == [metric == "final_test_bpd" for metric in CLAIM_METRICS]
    own = a.metrics[a.metrics["declared"]].iloc[0]
    assert (own["verdict"], own["resolved"]) == ("reproduced", "1 / 1")
    assert own["median_sd"] == pytest.approx(a.verdicts["sd"].iloc[0])


def test_until_resolved_takes_the_studys_max_seeds_unless_the_command_line_gives_one(tmp_path):
    spec = load_study(claim_study(tmp_path, lr=1e-3, max_seeds=6))
    assert SeedJudge().limit(spec) == 6 and SeedJudge(max_seeds=9).limit(spec) == 9
    assert SeedJudge().limit(load_study(claim_study(tmp_path, lr=1e-3))) == 12
    results = tmp_path / "results"
    run_study(
        claim_study(tmp_path, lr=1e-3, max_seeds=6),
        results,
        StudyOptions(launcher="inprocess", train_fn=effect_train),
        judge=SeedJudge(),
    )
    rows = decisions(results)
    assert rows[-1]["seeds"] <= 6 and all(row["looks"] == [3, 6] for row in rows)


def test_verdict_command_without_claims_and_outside_a_results_dir(tmp_path):
    results = tmp_path / "results"
    run_study(
        claim_study(tmp_path, lr=1e-3, claims=False), results, StudyOptions(launcher="inprocess", train_fn=effect_train)
    )
    plain = CliRunner().invoke(main, ["verdict", str(results)])
    assert plain.exit_code == 0 and "the study declares no claims" in plain.output
    assert not (results / "tables" / "verdicts.csv").exists()
    wrong = CliRunner().invoke(main, ["verdict", str(tmp_path)])
    assert wrong.exit_code == 2 and wrong.output.startswith(f"error: {tmp_path}: not a results directory")
    assert wrong.output.count("\n") == 1


def test_until_resolved_needs_claims(tmp_path):
    with pytest.raises(ConfigError, match=r"claims.yaml: --until-resolved needs the claims"):
        run_study(
            claim_study(tmp_path, lr=1e-3, claims=False),
            tmp_path / "r",
            StudyOptions(launcher="inprocess", train_fn=effect_train),
            judge=SeedJudge(max_seeds=9),
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
@pytest.mark.parametrize("scores", [[-1, 1, 1, 2, 2, 3, 3, 3], [-1, -1, 1, 2, 2, 3, 3, 3]], ids=["7-vs-1", "6-vs-2"])
def test_the_scale_studys_pattern_is_not_stopped_at_its_first_look(spending, scores):
    """8 seeds whose scores (in thirds of the 3 learning rates) go 7 or 6 ways to 1 or 2, as in
    the first scale study, with looks at 8 and 16: not resolved yet, so the next look trains
    (the former rule stopped for futility here)."""
    claim = ClaimSpec(id="exp", source="s", kind="divergence", key="model.scale", order=["sigmoid", "exp"])
    lrs, seeds = [3e-3, 5e-3, 7e-3], range(100, 108)
    diverged = {("exp", seed): max(score, 0) for seed, score in zip(seeds, scores)}
    diverged |= {("sigmoid", seed): max(-score, 0) for seed, score in zip(seeds, scores)}
    rows = [
        {"run_id": f"{scale}-{lr}-{seed}", "variant": scale, "seed": seed, "model.scale": scale, "train.lr": lr,
         "state": "diverged" if index < diverged[scale, seed] else "done", "final_test_bpd": 5.0,
         "best_test_bpd": 5.0}
        for scale in ("exp", "sigmoid") for seed in seeds for index, lr in enumerate(lrs)
    ]  # fmt: skip
    plan = SeedPlan.extend(list(seeds), max_seeds=16, spending=spending)
    decision, table = decide(pd.DataFrame(rows), NO_EVALS, [claim], ["model.scale", "train.lr"], plan, look=0)
    assert table["effect"].iloc[0] == pytest.approx(np.mean(scores) / 3)
    assert table["p"].iloc[0] > table["threshold"].iloc[0] and table["pair_verdict"].iloc[0] == "open"
    assert decision.action == "continue" and decision.add_seeds == list(range(108, 116))
