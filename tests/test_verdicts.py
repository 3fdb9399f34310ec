"""Verdicts on claims (docs/verdicts.md): known effects on synthetic finals tables, power and
seeds needed against statsmodels, the sequential rule's error rates by simulation, and
``glow-repro run --until-resolved`` end to end with a fake training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from glow_repro.analysis.report import analyse
from glow_repro.analysis.sequential import SeedJudge, SeedPlan, decide, worth_more_seeds
from glow_repro.analysis.verdicts import (
    MAX_SEEDS_NEEDED,
    best_case_dz,
    claim_verdict,
    format_verdicts,
    holm_adjusted,
    holm_significant,
    paired_tests,
    recorded_alpha,
    seeds_needed_sign,
    seeds_needed_t,
    sign_test_power,
    verdicts,
)
from glow_repro.cli import main
from glow_repro.config import ConfigError
from glow_repro.rundir import RunDir, atomic_write_json
from glow_repro.study.runner import run_study
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
    assert (table["ci_low"] > 0).all() and (table["p_holm"] < 0.05).all() and table["seeds_needed"].isna().all()
    assert (table["seeds"] == 6).all()


def test_a_reversed_effect_is_contradicted_even_when_other_pairs_hold():
    table = verdicts(finals_table({"conv1x1": 0.0, "shuffle": 1.0, "reverse": 0.5}), NO_EVALS, [ORDER], SWEPT)
    assert set(table["verdict"]) == {"contradicted"}
    wrong = table[table["pair"] == "shuffle < reverse"]
    assert (wrong["effect"] < 0).all() and (wrong["p_holm"] < 0.05).all()


def test_a_null_effect_is_inconclusive_and_says_how_many_seeds_it_would_take():
    table = verdicts(finals_table({p: 0.0 for p in PERMUTATIONS}, seeds=5, noise=0.3), NO_EVALS, [ORDER], SWEPT)
    assert set(table["verdict"]) == {"inconclusive"}
    pair_alpha = 0.05 / 6  # Bonferroni over the claim's 6 pairs
    for row in table.itertuples():
        d = abs(row.effect) / row.sd
        expected = math.ceil(TTestPower().solve_power(effect_size=d, nobs=None, alpha=pair_alpha, power=0.8))
        assert row.seeds_needed == (expected if expected <= MAX_SEEDS_NEEDED else np.inf), row
        mde = TTestPower().solve_power(effect_size=None, nobs=5, alpha=pair_alpha, power=0.8) * row.sd
        assert row.mde == pytest.approx(mde)
        assert row.ci_low < row.effect < row.ci_high
    shown = format_verdicts(table)
    assert set(shown["seeds_needed"]) <= {f"more than {MAX_SEEDS_NEEDED}"} | {str(i) for i in range(2, 1001)}


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


@pytest.mark.slow
def test_holm_agrees_with_statsmodels():
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0, 0.06, (8, 4)), [[0.01, 0.01, 0.04, 1.0], [0.2, 0.01, 0.02, 0.03]]])
    ours, reject = holm_adjusted(p), holm_significant(p, 0.05)
    for row, adjusted, rejected in zip(p, ours, reject):
        theirs = multipletests(row, alpha=0.05, method="holm")
        assert list(rejected) == list(theirs[0]) and adjusted == pytest.approx(theirs[1])


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
    claim = ORDER.model_copy(update={"metric": "mean_last_evals", "last_evals": 2})
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


def test_divergence_claims_use_the_exact_sign_test_on_seeds():
    claim = ClaimSpec(
        id="exp-diverges-more", source="s", kind="divergence", key="model.scale", order=["sigmoid", "exp"]
    )
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
    assert row["p"] == pytest.approx(stats.binomtest(8, 8).pvalue) and row["verdict"] == "reproduced"
    assert seeds_needed_sign(0.4, 0.1, 0.05) == seeds_needed_sign(0.1, 0.4, 0.05) < MAX_SEEDS_NEEDED
    none = divergence_finals({("sigmoid", 1e-3): [False] * 3, ("exp", 1e-3): [False] * 3})
    row = verdicts(none, NO_EVALS, [claim], ["model.scale"]).iloc[0]
    assert row["verdict"] == "inconclusive" and row["p"] == 1.0 and row["seeds_needed"] == np.inf
    # no seed differed yet, but 3 seeds do not rule out a rate up to 0.71 (exact 95 % bound)
    assert row["seeds_needed_best_case"] == seeds_needed_sign(1 - 0.025 ** (1 / 3), 0.0, 0.05) < 12


def test_sign_test_power_matches_enumeration_with_binomtest():
    plus, minus, alpha = 0.5, 0.1, 0.05
    for n in (4, 9, 15):
        exact = 0.0
        for k_plus in range(n + 1):
            for k_minus in range(n - k_plus + 1):
                prob = stats.multinomial.pmf(
                    [k_plus, k_minus, n - k_plus - k_minus], n, [plus, minus, 1 - plus - minus]
                )
                k = k_plus + k_minus
                if k and k_plus > k_minus and stats.binomtest(k_plus, k).pvalue <= alpha:
                    exact += prob
        assert sign_test_power(n, plus, minus, alpha)[0] == pytest.approx(exact)


def test_seed_plan_adds_the_studys_seed_count_at_each_look():
    plan = SeedPlan.extend([0, 2, 5], max_seeds=10)
    assert plan.looks == (3, 6, 9, 10) and plan.seeds == (0, 2, 5, 1, 3, 4, 6, 7, 8, 9)
    assert plan.alpha_per_look == pytest.approx(0.05 / 4) and plan.seeds_at(1) == [0, 2, 5, 1, 3, 4]
    assert SeedPlan.extend([0, 1, 2], max_seeds=2).looks == (3,)


# --- the sequential rule, simulated -------------------------------------------------------

STUDIES = 2000
PAIRS = [(0, 1), (0, 2), (1, 2)]  # a three-value order claim: better, worse


def simulate(means: list[float], plan: SeedPlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Final verdicts and seeds used of ``STUDIES`` simulated studies run by the sequential
    rule: three variants with ``means`` (claimed order: first lowest), per-seed offsets shared
    by the variants and unit noise. The same building blocks as :func:`decide`, on arrays."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1, (STUDIES, 1, plan.max_seeds)) + rng.normal(
        np.asarray(means)[None, :, None], 1.0, (STUDIES, 3, plan.max_seeds)
    )
    diffs = np.stack([values[:, worse] - values[:, better] for better, worse in PAIRS], axis=1)
    final = np.full(STUDIES, "", dtype=object)
    used = np.zeros(STUDIES, dtype=int)
    active = np.ones(STUDIES, dtype=bool)
    pair_alpha = plan.alpha_per_look / len(PAIRS)
    for look, n in enumerate(plan.looks):
        if not active.any():
            break
        effect, sd, p = paired_tests(diffs[active, :, :n], "order")
        significant = holm_significant(p, plan.alpha_per_look)
        verdict = claim_verdict(significant, effect)
        needed = np.where(significant, np.nan, seeds_needed_t(best_case_dz(effect, sd, n), pair_alpha))
        more = worth_more_seeds(verdict, significant, effect, needed, plan.max_seeds) & (look + 1 < len(plan.looks))
        stopped = np.flatnonzero(active)[~more]
        final[stopped], used[stopped], active[stopped] = verdict[~more], n, False
    return final, used


def tolerance(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / STUDIES)


PLAN = SeedPlan.extend([0, 1, 2], max_seeds=12)  # looks at 3, 6, 9, 12 seeds


@pytest.mark.slow
def test_sequential_rule_keeps_the_false_positive_rate_at_alpha():
    final, used = simulate([0.0, 0.0, 0.0], PLAN, seed=1)
    resolved = np.isin(final, ["reproduced", "contradicted"]).mean()
    print(
        f"null: reproduced or contradicted in {resolved:.4f} of {STUDIES} studies (alpha {PLAN.alpha}), "
        f"mean seeds {used.mean():.1f}"
    )
    assert (final != "").all()
    assert resolved <= PLAN.alpha + tolerance(PLAN.alpha)
    naive = SeedPlan(PLAN.seeds, PLAN.looks, alpha=PLAN.alpha * len(PLAN.looks))  # every look at alpha
    naive_rate = np.isin(simulate([0.0, 0.0, 0.0], naive, seed=1)[0], ["reproduced", "contradicted"]).mean()
    print(f"null, every look at alpha {PLAN.alpha}: {naive_rate:.4f}")
    assert naive_rate > resolved  # the split is what keeps the rate down


@pytest.mark.slow
def test_sequential_rule_resolves_a_true_effect_with_the_planned_power():
    """Adjacent values differ by the effect the last look alone detects with 80 % power (at
    its Bonferroni pair level): the sequential rule reproduces the claim at least about as
    often as that single look would (early looks can reject, futility rarely stops it)."""
    pair_alpha = PLAN.alpha_per_look / len(PAIRS)
    dz = TTestPower().solve_power(effect_size=None, nobs=PLAN.max_seeds, alpha=pair_alpha, power=0.8)
    step = dz * math.sqrt(2)  # the sd of a paired difference of unit-noise variants is sqrt(2)
    final, used = simulate([0.0, step, 2 * step], PLAN, seed=2)
    last_look = SeedPlan(PLAN.seeds, (PLAN.max_seeds,), alpha=PLAN.alpha_per_look)
    expected = (simulate([0.0, step, 2 * step], last_look, seed=2)[0] == "reproduced").mean()
    power = (final == "reproduced").mean()
    print(
        f"effect dz {dz:.2f}: reproduced in {power:.3f} of {STUDIES} studies (last look alone "
        f"{expected:.3f}), contradicted {(final == 'contradicted').mean():.4f}, mean seeds {used.mean():.1f}"
    )
    assert power >= max(0.8, expected) - tolerance(0.8)
    assert (final == "contradicted").mean() <= 3 / STUDIES


def test_decide_on_a_table_agrees_with_the_array_rule():
    finals = finals_table({"conv1x1": 0.0, "shuffle": 0.1, "reverse": 0.2}, seeds=12, noise=1.0, seed=4)
    finals = finals[finals["model.coupling"] == "additive"]
    claim = ClaimSpec(id="c", source="s", key="model.permutation", order=["conv1x1", "shuffle", "reverse"])
    decision, table = decide(finals, NO_EVALS, [claim], SWEPT, PLAN, look=0)
    values = finals[finals["seed"] < 3].pivot(index="model.permutation", columns="seed", values="final_test_bpd")
    values = values.loc[["conv1x1", "shuffle", "reverse"]].to_numpy()
    diffs = np.stack([values[worse] - values[better] for better, worse in PAIRS])[None]
    effect, sd, p = paired_tests(diffs, "order")
    significant = holm_significant(p, PLAN.alpha_per_look)
    assert table["p"].to_numpy() == pytest.approx(p[0]) and table["effect"].to_numpy() == pytest.approx(effect[0])
    assert decision.verdicts == {"c": str(claim_verdict(significant, effect)[0])}
    needed = seeds_needed_t(best_case_dz(effect, sd, 3), PLAN.alpha_per_look / 3)
    assert table["seeds_needed_best_case"].to_numpy() == pytest.approx(
        np.where(significant, np.nan, needed)[0], nan_ok=True
    )
    more = worth_more_seeds(claim_verdict(significant, effect), significant, effect, needed, PLAN.max_seeds)[0]
    assert decision.action == ("continue" if more else "stop")
    assert decision.seeds == 3 and decision.alpha == PLAN.alpha_per_look


# --- end to end: glow-repro run --until-resolved with a fake training --------------------


def effect_train(config, run_dir, **kwargs):
    """fake_train, with a final bpd of 5 - effect * (width == 16) + seeded noise, where the
    effect is the study's train.lr (1e-3 -> no effect, anything else -> 1 bpd)."""
    summary = fake_train(config, run_dir, **kwargs)
    noise = np.random.default_rng([config.seed, config.model.width]).normal(0, 0.05)
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
        launcher="inprocess",
        train_fn=effect_train,
        judge=SeedJudge(max_seeds=9),
    )
    (row,) = decisions(results)
    assert row["action"] == "stop" and row["reason"] == "every claim is resolved"
    assert row["verdicts"] == {"wider-is-better": "reproduced"} and row["alpha"] == pytest.approx(0.05 / 3)
    assert report.counts["done"] == 6
    result = CliRunner().invoke(main, ["verdict", str(results)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wider-is-better: REPRODUCED (test; 1 pair, Holm at alpha 0.0167")


def test_until_resolved_adds_seeds_to_every_variant_then_says_why_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("glow_repro.study.launchers._default_train", lambda: effect_train)
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
    assert [row["seeds"] for row in rows] == [3, 6, 9][: len(rows)]
    assert all(row["action"] == "continue" for row in rows[:-1]) and rows[-1]["action"] == "stop"
    assert all(row["verdicts"] == {"wider-is-better": "inconclusive"} for row in rows)
    for row in rows[:-1]:
        assert f"adding seeds {', '.join(map(str, range(row['seeds'], row['seeds'] + 3)))}" in row["reason"]
    runs = [RunDir(p) for p in (results / "runs").iterdir()]
    assert len(runs) == 2 * rows[-1]["seeds"] and all(r.status()["state"] == "done" for r in runs)
    assert f"look {len(rows) - 1} ({rows[-1]['seeds']} seeds, alpha 0.0167): stop: " in result.output
    assert "wider-is-better: INCONCLUSIVE" in result.output
    verdict_table = pd.read_csv(results / "tables" / "verdicts.csv")
    assert verdict_table["seeds"].tolist() == [rows[-1]["seeds"]] and verdict_table["alpha"].tolist() == [
        pytest.approx(0.05 / 3)
    ]


def test_the_report_judges_at_the_recorded_alpha_and_under_every_metric(tmp_path):
    results = tmp_path / "results"
    run_study(claim_study(tmp_path, lr=2e-3), results, launcher="inprocess", train_fn=effect_train, judge=SeedJudge(9))
    tables = load_tables(results)
    a = analyse(tables, recorded_alpha(results))
    assert a.verdicts["alpha"].tolist() == [pytest.approx(0.05 / 3)]
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
        launcher="inprocess",
        train_fn=effect_train,
        judge=SeedJudge(),
    )
    rows = decisions(results)
    assert rows[-1]["seeds"] <= 6 and all(row["alpha"] == pytest.approx(0.05 / 2) for row in rows)


def test_verdict_command_without_claims_and_outside_a_results_dir(tmp_path):
    results = tmp_path / "results"
    run_study(claim_study(tmp_path, lr=1e-3, claims=False), results, launcher="inprocess", train_fn=effect_train)
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
            launcher="inprocess",
            train_fn=effect_train,
            judge=SeedJudge(max_seeds=9),
        )
    assert not (tmp_path / "r").exists()
