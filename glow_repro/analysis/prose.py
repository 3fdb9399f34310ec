"""The report's sentences written from the numbers of an :class:`Analysis`: the summary, one
sentence per claim's verdict (docs/verdicts.md), which runs the statistics leave out and the
setup's facts. Markdown-lite: `code` marks names, **strong** a verdict
(:mod:`glow_repro.analysis.document` renders it to HTML and Markdown).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from glow_repro.analysis.claim_view import ci_text, claim_labels, threshold_text
from glow_repro.analysis.number_text import bpd, is_number, p_clause, with_ci
from glow_repro.analysis.study_analysis import Analysis
from glow_repro.analysis.verdicts import claims_of, number, seeds_text
from glow_repro.run.rundir import RunState
from glow_repro.study.labels import duration, format_value, short_names
from glow_repro.study.tables import Tables

#: Why a run that is not ``done`` is left out of the final-bpd statistics, by state.
LEFT_OUT = {
    RunState.DIVERGED: "diverged",
    RunState.FAILED: "failed with an error",
    RunState.INTERRUPTED: "interrupted",
    RunState.RUNNING: "still running",
    RunState.PENDING: "not started",
    RunState.UNREADABLE: "whose status.json could not be read",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _over_runs(n: int, joint: str) -> str:
    """``mean [95% CI] over 3 finished runs``; one run has no interval to state."""
    return f"mean [95% CI]{joint}{_plural(n, 'finished run')}" if n > 1 else "1 finished run, no interval"


def _state_order(finals: pd.DataFrame) -> list[RunState]:
    """The states the runs are in, in display order."""
    return RunState.display_order(finals["state"])


def _states(finals: pd.DataFrame) -> str:
    counts = finals["state"].value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in _state_order(finals))


def _budget(config: dict) -> str:
    """``400 steps`` or ``1.5 epochs``: how the runs' training budget was given."""
    if pd.isna(config.get("train.steps")) and not pd.isna(config.get("train.epochs")):
        return f"{format_value(config['train.epochs'])} epochs"
    return f"{format_value(config.get('train.steps'))} steps"


def claimed_order_clause(claims: list, key: str, order: list) -> str:
    """``. The claimed order (a < b) holds in these means`` for the study's first ordering
    claim on ``key`` whose values are exactly the levels of ``order`` (ours, best first); a
    claim with a margin claims no order, so it is not one."""
    for claim in claims:
        claimed = [format_value(value) for value in claim.order]
        ordering = claim.kind == "order" and not claim.margin
        if ordering and claim.key == key and sorted(claimed) == sorted(map(format_value, order)):
            holds = [format_value(level) for level in order] == claimed
            return f". The claimed order ({' < '.join(claimed)}) {'holds' if holds else 'does not hold'} in these means"
    return ""


def left_out_sentence(finals: pd.DataFrame, shown: int = 5, named: dict[str, str] | None = None) -> str:
    """Which runs the statistics over finished runs leave out, and why (their state, or what
    the tables found wrong with them: ``named``, ``Tables.left_out``)."""
    named = named or {}
    left = finals[(finals["state"] != RunState.DONE) & ~finals["run_id"].isin(named)]
    if left.empty and not named:
        return "No run is left out: every run finished."
    parts = [f"run `{run_id}`: {why}" for run_id, why in named.items()]
    for state in _state_order(left):
        runs = left[left["state"] == state]
        ids = ", ".join(f"`{run_id}`" for run_id in runs["run_id"].head(shown))
        more = f" and {len(runs) - shown} more" if len(runs) > shown else ""
        parts.append(f"{_plural(len(runs), 'run')} {LEFT_OUT.get(state, state)} ({ids}{more})")
    return f"Left out of these statistics: {'; '.join(parts)}."


def decision_clause(p: float, threshold: float) -> str:
    """``p = 0.003 against a threshold of 0.0125``: a pair's p and the p it was judged at."""
    if not is_number(p):
        return ""
    return p_clause(p) + (f" against a threshold of {threshold_text(threshold)}" if is_number(threshold) else "")


def verdict_sentences(a: Analysis) -> list[str]:
    """One sentence per claim of the study: its verdict, its outcome and, when it is
    contradicted or inconclusive, why in numbers (docs/verdicts.md)."""
    out = []
    claims = {claim.id: claim for claim in claims_of(a.tables.study)}
    for _, row in a.claims.iterrows():
        claim = claims[row["claim"]]
        order = " < ".join(map(format_value, claim.order))
        if claim.margin:
            order = f"{order}, or worse by at most {claim.margin:g} bpd,"
        text = (
            f"Claim `{row['claim']}` ({row['source']}), {order} in the {row['metric_label']}: "
            f"**{row['verdict']}**, {row['outcome']}, with {_plural(row['seeds'], 'seed')} or more per pair"
        )
        text += f" ({row['boundary']})" if pd.notna(row["boundary"]) else ""
        if row["verdict"] == "inconclusive":
            needed = (
                f"seeds a fixed design would need to detect {number(row['min_effect'])} with 80 % power: "
                f"{seeds_text(row['seeds_needed'])}"
                if pd.notna(row["seeds_needed"])
                else "a pair needs two seeds or more before its spread, and so the seeds it needs, can be estimated"
            )
            decision = decision_clause(row["p"], row["threshold"])
            text += (
                f"; the least resolved pair, {row['weakest']}, has an effect of {number(row['effect'])}"
                f"{ci_text(row['ci_low'], row['ci_high'], row['level'])}{', ' + decision if decision else ''}; {needed}"
            )
        out.append(text + ".")
    return out


def summary_paragraphs(a: Analysis) -> list[str]:
    """The report's summary, written from the numbers (Markdown; `code` marks names)."""
    return [
        *verdict_sentences(a),
        *_design_sentences(a),
        _ranking_sentence(a),
        *_effect_sentences(a),
        _stability_sentence(a),
        _comparison_sentence(a),
    ]


def _design_sentences(a: Analysis) -> list[str]:
    """What the study trained: variants, swept keys, seeds, data and budget, and a warning when
    its runs come from more than one spec."""
    finals = a.tables.finals
    n_variants, seeds = finals["variant"].nunique(), sorted(finals["seed"].unique())
    started = bool((finals["state"] != "pending").any())
    config = a.tables.configs.iloc[0]
    swept = ", ".join(f"`{k}`" for k in a.tables.swept) or "nothing (one configuration)"
    data = a.comparison.iloc[0] if len(a.comparison) else {"dataset": config["data.dataset"], "pipeline": "?"}
    variants = _plural(n_variants, "variant")
    if a.planned_variants and a.planned_variants > n_variants:
        variants = f"{n_variants} of {a.planned_variants} variants"
    mixed = (
        f"**The runs come from {a.specs} different specs of this study** (`--force-spec`): two variants "
        "may differ in more than their swept settings, so their comparisons can be confounded."
    )
    return [
        *([mixed] if a.specs > 1 else []),
        f"This study {'trained' if started else 'has'} {_plural(len(finals), 'run')}: {variants} "
        f"(swept: {swept}) x {_plural(len(seeds), 'seed')}, on {data['dataset']} ({data['pipeline']}) for "
        f"{_budget(config)} each. Outcome: {_states(finals)}.",
    ]


def _ranking_sentence(a: Analysis) -> str:
    """The lowest final test bpd and how far the runner-up and the last are behind it."""
    ranked = a.ranking
    if len(ranked) == 1:
        row = ranked.iloc[0]
        which = f" of `{row['variant']}`" if a.tables.finals["variant"].nunique() > 1 else ""
        return (
            f"Final test bpd{which}: {with_ci(row['final_mean'], row['final_ci_low'], row['final_ci_high'])} "
            f"({_over_runs(int(row['n_done']), ' over ')}). {no_comparison(a)}"
        )
    if len(ranked) == 0:
        return "No run finished, so there is no final test bpd to compare."
    best, second, worst = ranked.iloc[0], ranked.iloc[1], ranked.iloc[-1]
    pair = _pair(a.pairs, best["variant"], second["variant"])
    text = (
        f"Lowest final test bpd: `{best['variant']}` with "
        f"{with_ci(best['final_mean'], best['final_ci_low'], best['final_ci_high'])} "
        f"({_over_runs(int(best['n_done']), ', ')}). The runner-up "
        f"`{second['variant']}` reached {bpd(second['final_mean'])}: a difference of "
        f"{bpd(second['final_mean'] - best['final_mean'])} bpd" + _test_clause(pair, len(a.pairs)) + "."
    )
    if len(ranked) > 2:
        text += (
            f" The last, `{worst['variant']}`, is {bpd(worst['final_mean'] - best['final_mean'])} bpd "
            f"behind the best; {int(a.pairs['significant'].sum())} of {len(a.pairs)} pairwise "
            "differences are significant in that descriptive comparison."
        )
    return text


def _effect_sentences(a: Analysis) -> list[str]:
    """Per swept key, the order of its levels in the mean final bpd over the other settings."""
    name, out = short_names(a.tables.swept), []
    for effect in a.effects.itertuples():
        means = ", ".join(f"{level} {bpd(m)}" for level, m in effect.means.items())
        text = (
            f"By `{name[effect.key]}`: {' < '.join(map(str, effect.order))} (mean final bpd over the "
            f"other settings: {means})"
        )
        if effect.cells > 1:
            text += f"; the same order in {effect.consistent} of {effect.cells} settings of the other swept keys"
        out.append(text + claimed_order_clause(claims_of(a.tables.study), effect.key, list(effect.order)) + ".")
    return out


def _stability_sentence(a: Analysis) -> str:
    """How many runs diverged (the highest rate with its interval), the monitor's events and
    the runs that failed."""
    finals = a.tables.finals
    diverged = int((finals["state"] == RunState.DIVERGED).sum())
    trials = diverged + int((finals["state"] == RunState.DONE).sum())
    if diverged:
        worst = a.divergence.sort_values("rate", ascending=False).iloc[0]
        text = (
            f"{diverged} of {trials} runs that ended diverged; the highest rate is "
            f"`{worst['variant']}` with {worst['n_diverged']}/{worst['n']} "
            f"(95% Wilson CI {worst['ci_low']:.2f}-{worst['ci_high']:.2f})."
        )
    elif trials:
        text = f"None of the {trials} runs that ended diverged."
    else:
        text = "No run has ended (done or diverged) yet."
    events = a.tables.events
    if len(events):
        kinds = ", ".join(f"{n} {k}" for k, n in events["kind"].value_counts().items())
        text += f" The stability monitor recorded {_plural(len(events), 'event')} ({kinds})."
    failed = int((finals["state"] == RunState.FAILED).sum())
    if failed:
        text += f" {_plural(failed, 'run')} failed with an error (listed under Stability)."
    return text


def no_comparison(a: Analysis) -> str:
    """Why the study has no pairwise comparison (fewer than two variants with a finished
    run); empty when it has one."""
    finished = list(a.ranking.get("variant", []))
    if len(finished) >= 2:
        return ""
    if a.tables.finals["variant"].nunique() == 1:
        return "No comparison: the study has one variant."
    if finished:
        return f"No comparison: only `{finished[0]}` has a finished run."
    return "No comparison: no variant has a finished run."


def _test_clause(pair: pd.Series, n_pairs: int) -> str:
    """`` (95% CI [...]), significant in the descriptive comparison (Welch t-test, p = ...;
    Holm-adjusted ...)`` for the pair ``best - second`` of the summary, or why it was not tested."""
    if not np.isfinite(pair["p_value"]):
        return ", not tested (a t-test needs two finished runs of each variant)"
    verdict = "significant" if pair["significant"] else "not significant"
    return (
        f" (95% CI [{bpd(-pair['ci_high'])}, {bpd(-pair['ci_low'])}]), {verdict} in the descriptive comparison "
        f"({pair['test']} on final test bpd, unpaired, {p_clause(pair['p_value'])}; Holm-adjusted over "
        f"{_plural(n_pairs, 'pair')}: {p_clause(pair['p_holm'])})"
    )


def _pair(pairs: pd.DataFrame, a: str, b: str) -> pd.Series:
    """The row comparing ``a`` with ``b``, oriented as ``a - b``."""
    row = pairs[(pairs["a"] == a) & (pairs["b"] == b)]
    if len(row):
        return row.iloc[0]
    flipped = pairs[(pairs["a"] == b) & (pairs["b"] == a)].iloc[0].copy()
    flipped["diff"], flipped["t"] = -flipped["diff"], -flipped["t"]
    flipped["ci_low"], flipped["ci_high"] = -flipped["ci_high"], -flipped["ci_low"]
    return flipped


def _comparison_sentence(a: Analysis) -> str:
    rows = a.comparison
    comparable = rows[rows["comparable"] & rows["kind"].eq("paper")]
    if comparable.empty:
        reasons = rows.sort_values("reference", key=lambda r: r != "none", kind="stable")["why_not"]
        why = f" ({reasons.iloc[0]})" if len(reasons) and reasons.iloc[0] else ""
        return (
            "No published number is comparable with this study's data pipeline"
            + why
            + "; the comparison section lists each candidate and why it does not apply."
        )
    best = comparable.sort_values("ours").iloc[0]
    return (
        f"Against the published numbers on the same pipeline, the best variant `{best['variant']}` "
        f"({bpd(best['ours'])}) is {bpd(abs(best['difference']))} bpd "
        f"{'above' if best['difference'] > 0 else 'below'} {best['reference']} ({bpd(best['theirs'])}, "
        f"{best['source']})."
    )


def repeats_sentence(a: Analysis) -> str:
    """The one line naming the metrics the table of claims under other metrics leaves out
    (:func:`glow_repro.analysis.report_tables.metrics_table`) and the one each equals."""
    labels = dict(zip(zip(a.metrics["claim"], a.metrics["metric"]), claim_labels(a.tables, a.metrics)))
    same = dict.fromkeys(f"the {labels[key]}, equal to the {labels[(key[0], kept)]}" for key, kept in a.repeats.items())
    return f"Left out as equal in every run to a metric shown: {'; '.join(same)}." if same else ""


def run_commits(finals: pd.DataFrame) -> list[str]:
    """The git commits the runs were trained at (from their ``environment.json``), in order."""
    return list(finals.get("env_git_commit", pd.Series(dtype=str)).dropna().astype(str).unique())


def setup_facts(tables: Tables) -> dict[str, str]:
    """The setup's facts: the runs by state, the training time, the code commits."""
    finals = tables.finals
    wall = pd.to_numeric(finals["wall_time"], errors="coerce")
    return {
        "runs": f"{len(finals)} ({_states(finals)})",
        "total training time": f"{duration(wall.sum())} over all runs; {duration(wall.median())} median per run",
        "code commit": ", ".join(run_commits(finals)) or "not recorded",
    }
