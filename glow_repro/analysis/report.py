"""The paper-style study report: ``report.html``, ``report.md``, figures and every table as
CSV, from a results directory alone (no torch; docs/architecture.md).

``build_report(results/<study>, reports/<study>)`` writes::

    report.html          one self-contained file: CSS inline, images as data: URIs
    report.md            the same text; figures referenced under figures/
    figures/*.png|svg    every figure; figures/samples/*.png copied from run directories
    tables/*.csv         the long tables (also .parquet) and every table the report shows
    tables/*.tex         the final-bpd, pairwise and published-comparison tables for a paper

Sections follow a paper: summary (written from the numbers), setup, results, manipulation
(when the study asked for one: the figures and numbers the study layer wrote under
``results/<study>/manipulations/``), stability, comparison with published numbers, fidelity
to paper and official code, how to reproduce.
:func:`report_sections` writes them once as a section model
(:mod:`glow_repro.analysis.document`) that renders to both HTML and Markdown; the figures
are the records of :mod:`glow_repro.analysis.figures` that apply to the study.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from tqdm.auto import tqdm

from glow_repro import __version__
from glow_repro.analysis import aggregate, figures
from glow_repro.analysis.claim_view import (
    SEED_VARIANCE,
    ci_text,
    claim_labels,
    claim_rows,
    coinciding_metrics,
    interval_column,
    pair_rows,
    threshold_text,
)
from glow_repro.analysis.document import (
    Block,
    Code,
    Facts,
    FigureFile,
    Files,
    Fold,
    Heading,
    Paragraphs,
    SampleRows,
    Section,
    Table,
    inline_html,
    place_figures,
)
from glow_repro.analysis.latex import write_latex
from glow_repro.analysis.published import compare, fidelity_table
from glow_repro.analysis.sequential import recorded_look
from glow_repro.analysis.verdicts import (
    Look,
    claims_of,
    metric_alternatives,
    number,
    seeds_text,
    study_verdicts,
)
from glow_repro.image_panels import shown_image, shown_images
from glow_repro.rundir import RunState, StudyDir, UnreadableFileError, read_json
from glow_repro.study.labels import duration, format_value, short_names
from glow_repro.study.runner import read_manifest
from glow_repro.study.tables import Tables, describe_differences, load_tables, shared_settings, write_tables

#: Report tables also written as LaTeX (:mod:`glow_repro.analysis.latex`): the display
#: table's name -> (the name of its .tex, the CSV of the numbers it shows, its caption).
LATEX_TABLES = {
    "verdicts": ("verdicts", "verdict_claims", "Verdict on each claim from paired tests on its own metric: its "
                 "outcome, the weakest pair's effect with its interval at the level the pair was judged at (in "
                 "the column header), that pair's p and threshold, and the seeds needed."),
    "final_bpd": ("final_bpd", "summary", r"Final test bits per dimension per variant: mean over finished runs "
                  r"with a two-sided 95\% Student-t interval."),
    "pairwise": ("pairwise", "pairwise", r"Descriptive, not the verdict test: differences of mean final test bpd "
                 r"($a - b$) with Welch's unpaired t-test and its 95\% interval; p-values Holm-corrected over all pairs."),
    "comparable": ("comparison", "comparison", "Our mean final test bpd beside published numbers for the same "
                   "data pipeline."),
}  # fmt: skip


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


@dataclass
class Analysis:
    """Every number the report shows, computed once from the tables."""

    tables: Tables
    summary: pd.DataFrame
    curves: pd.DataFrame
    divergence: pd.DataFrame
    pairs: pd.DataFrame
    ranking: pd.DataFrame
    effects: pd.DataFrame
    threshold: pd.DataFrame
    comparison: pd.DataFrame
    differences: pd.DataFrame
    verdicts: pd.DataFrame
    claims: pd.DataFrame
    """One row per claim, as :func:`claim_rows` shows it."""
    metrics: pd.DataFrame
    repeats: dict[tuple[str, str], str]
    """``(claim, metric) -> the metric it equals in every run`` (:func:`coinciding_metrics`)."""
    planned_variants: int | None = None
    """Variants the results directory's manifest plans (None: unknown); more than have runs
    while a study is half-finished."""
    specs: int = 1
    """Specs of the study whose runs the directory holds (more than one after ``--force-spec``)."""


def analyse(tables: Tables, look: Look | None = None, judged_seeds: Sequence[int] | None = None) -> Analysis:
    """Aggregate a study's tables (conventions in :mod:`glow_repro.analysis.aggregate`);
    claims are judged at ``look`` on ``judged_seeds`` (for a study run ``--until-resolved``:
    the look its record ends on and that look's seeds; default one look at every seed)."""
    judged = tables.only_seeds(judged_seeds) if judged_seeds is not None else tables
    keys = ["variant", *tables.swept]
    summary = aggregate.variant_summary(tables.finals, keys)
    pairs = aggregate.pairwise(tables.finals)
    worst = summary["final_mean"].max()
    threshold = float(np.ceil(worst * 100) / 100) if np.isfinite(worst) else float("nan")
    verdicts, metrics = study_verdicts(judged, look), metric_alternatives(judged, look)
    return Analysis(
        tables=tables,
        summary=summary,
        curves=aggregate.curves(tables.evals, keys),
        divergence=aggregate.divergence(tables.finals, keys),
        pairs=pairs,
        ranking=aggregate.ranking(summary, pairs),
        effects=aggregate.factor_effects(tables.finals, tables.swept),
        threshold=aggregate.time_to_threshold(tables.evals, threshold, keys),
        comparison=compare(tables.finals, tables.configs),
        differences=describe_differences(tables.configs, tables.swept),
        verdicts=verdicts,
        claims=claim_rows(verdicts, tables),
        metrics=metrics,
        repeats=coinciding_metrics(tables, metrics),
    )


# --------------------------------------------------------------------------- numbers as text


def is_number(value: object) -> bool:
    """A finite number (not None, NaN or infinite): what the report can print as one."""
    return isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def bpd(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def with_ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``3.123 [3.100, 3.146]``, or just the mean when there is no interval."""
    if not is_number(low):
        return bpd(mean, digits)
    return f"{bpd(mean, digits)} [{bpd(low, digits)}, {bpd(high, digits)}]"


def p_text(p: float) -> str:
    if not is_number(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
    """``p < 0.001`` or ``p = 0.032`` for running text."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _over_runs(n: int, joint: str) -> str:
    """``mean [95% CI] over 3 finished runs``; one run has no interval to state."""
    return f"mean [95% CI]{joint}{_plural(n, 'finished run')}" if n > 1 else "1 finished run, no interval"


#: Why a run that is not ``done`` is left out of the final-bpd statistics, by state.
LEFT_OUT = {
    RunState.DIVERGED: "diverged", RunState.FAILED: "failed with an error", RunState.INTERRUPTED: "interrupted",
    RunState.RUNNING: "still running", RunState.PENDING: "not started",
    RunState.UNREADABLE: "whose status.json could not be read",
}  # fmt: skip


def _state_order(finals: pd.DataFrame) -> list[RunState]:
    """The states the runs are in, in display order."""
    return RunState.display_order(finals["state"])


def _states(finals: pd.DataFrame) -> str:
    counts = finals["state"].value_counts()
    return ", ".join(f"{counts[s]} {s}" for s in _state_order(finals))


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


def _budget(config: dict) -> str:
    """``400 steps`` or ``1.5 epochs``: how the runs' training budget was given."""
    if pd.isna(config.get("train.steps")) and not pd.isna(config.get("train.epochs")):
        return f"{format_value(config['train.epochs'])} epochs"
    return f"{format_value(config.get('train.steps'))} steps"


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
    finals, name = a.tables.finals, short_names(a.tables.swept)
    n_variants, seeds = finals["variant"].nunique(), sorted(finals["seed"].unique())
    started = bool((finals["state"] != "pending").any())
    config = a.tables.configs.iloc[0]
    swept = ", ".join(f"`{k}`" for k in a.tables.swept) or "nothing (one configuration)"
    data = a.comparison.iloc[0] if len(a.comparison) else {"dataset": config["data.dataset"], "pipeline": "?"}
    variants = _plural(n_variants, "variant")
    if a.planned_variants and a.planned_variants > n_variants:
        variants = f"{n_variants} of {a.planned_variants} variants"
    out = [
        *verdict_sentences(a),
        *(
            [
                f"**The runs come from {a.specs} different specs of this study** (`--force-spec`): two variants "
                "may differ in more than their swept settings, so their comparisons can be confounded."
            ]
            if a.specs > 1
            else []
        ),
        f"This study {'trained' if started else 'has'} {_plural(len(finals), 'run')}: {variants} "
        f"(swept: {swept}) x {_plural(len(seeds), 'seed')}, on {data['dataset']} ({data['pipeline']}) for "
        f"{_budget(config)} each. Outcome: {_states(finals)}.",
    ]
    ranked = a.ranking
    if len(ranked) >= 2:
        best, second, worst = ranked.iloc[0], ranked.iloc[1], ranked.iloc[-1]
        pair = _pair(a.pairs, best["variant"], second["variant"])
        out.append(
            f"Lowest final test bpd: `{best['variant']}` with "
            f"{with_ci(best['final_mean'], best['final_ci_low'], best['final_ci_high'])} "
            f"({_over_runs(int(best['n_done']), ', ')}). The runner-up "
            f"`{second['variant']}` reached {bpd(second['final_mean'])}: a difference of "
            f"{bpd(second['final_mean'] - best['final_mean'])} bpd" + _test_clause(pair, len(a.pairs)) + "."
        )
        if len(ranked) > 2:
            out[-1] += (f" The last, `{worst['variant']}`, is {bpd(worst['final_mean'] - best['final_mean'])} bpd "
                        f"behind the best; {int(a.pairs['significant'].sum())} of {len(a.pairs)} pairwise "
                        "differences are significant in that descriptive comparison.")  # fmt: skip
    elif len(ranked) == 1:
        row = ranked.iloc[0]
        which = f" of `{row['variant']}`" if n_variants > 1 else ""
        out.append(f"Final test bpd{which}: {with_ci(row['final_mean'], row['final_ci_low'], row['final_ci_high'])} "
                   f"({_over_runs(int(row['n_done']), ' over ')}). {no_comparison(a)}")  # fmt: skip
    else:
        out.append("No run finished, so there is no final test bpd to compare.")
    for effect in a.effects.itertuples():
        means = ", ".join(f"{level} {bpd(m)}" for level, m in effect.means.items())
        text = (f"By `{name[effect.key]}`: {' < '.join(map(str, effect.order))} (mean final bpd over the "
                f"other settings: {means})")  # fmt: skip
        if effect.cells > 1:
            text += f"; the same order in {effect.consistent} of {effect.cells} settings of the other swept keys"
        out.append(text + claimed_order_clause(claims_of(a.tables.study), effect.key, list(effect.order)) + ".")
    diverged = int((finals["state"] == RunState.DIVERGED).sum())
    trials = diverged + int((finals["state"] == RunState.DONE).sum())
    if diverged:
        worst = a.divergence.sort_values("rate", ascending=False).iloc[0]
        out.append(f"{diverged} of {trials} runs that ended diverged; the highest rate is "
                   f"`{worst['variant']}` with {worst['n_diverged']}/{worst['n']} "
                   f"(95% Wilson CI {worst['ci_low']:.2f}-{worst['ci_high']:.2f}).")  # fmt: skip
    elif trials:
        out.append(f"None of the {trials} runs that ended diverged.")
    else:
        out.append("No run has ended (done or diverged) yet.")
    events = a.tables.events
    if len(events):
        kinds = ", ".join(f"{n} {k}" for k, n in events["kind"].value_counts().items())
        out[-1] += f" The stability monitor recorded {_plural(len(events), 'event')} ({kinds})."
    failed = int((finals["state"] == RunState.FAILED).sum())
    if failed:
        out[-1] += f" {_plural(failed, 'run')} failed with an error (listed under Stability)."
    out.append(_comparison_sentence(a))
    return out


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
    return (f" (95% CI [{bpd(-pair['ci_high'])}, {bpd(-pair['ci_low'])}]), {verdict} in the descriptive comparison "
            f"({pair['test']} on final test bpd, unpaired, {p_clause(pair['p_value'])}; Holm-adjusted over "
            f"{_plural(n_pairs, 'pair')}: {p_clause(pair['p_holm'])})")  # fmt: skip


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
        return ("No published number is comparable with this study's data pipeline" + why +
                "; the comparison section lists each candidate and why it does not apply.")  # fmt: skip
    best = comparable.sort_values("ours").iloc[0]
    return (f"Against the published numbers on the same pipeline, the best variant `{best['variant']}` "
            f"({bpd(best['ours'])}) is {bpd(abs(best['difference']))} bpd "
            f"{'above' if best['difference'] > 0 else 'below'} {best['reference']} ({bpd(best['theirs'])}, "
            f"{best['source']}).")  # fmt: skip


# --------------------------------------------------------------------------- display tables


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The verdict on each claim (rows of :func:`claim_rows`) as text: its outcome, its metric
    in words, the weakest pair's effect with its interval at the level the pair was judged at,
    that pair's p and threshold."""
    header, effects = interval_column(claims)
    return pd.DataFrame({
        "claim": claims["claim"], "source": claims["source"], "verdict": claims["verdict"],
        "outcome": claims["outcome"], "metric": claims["metric_label"],
        "weakest pair": claims["weakest"], header: effects, "p": claims["p"].map(number),
        "p threshold": claims["threshold"].map(threshold_text), "min effect": claims["min_effect"].map(number),
        "seeds": claims["seeds"].astype(str), "seeds needed": claims["seeds_needed"].map(seeds_text),
    })  # fmt: skip


def pairs_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Every pair's paired test on its claim's metric (rows of :func:`pair_rows`) as text."""
    header, effects = interval_column(pairs)
    return pd.DataFrame({
        "claim": pairs["claim"], "within": pairs["within"], "pair": pairs["pair"],
        "pair verdict": pairs["pair_verdict"].astype(object).fillna("-"), header: effects, "p": pairs["p"].map(number),
        "p threshold": pairs["threshold"].map(threshold_text), "seeds": pairs["seeds"].astype(str),
        "mde": pairs["mde"].map(lambda v: "none" if np.isinf(v) else number(v)),
        "seeds needed": pairs["seeds_needed"].map(seeds_text),
    })  # fmt: skip


def metrics_table(a: Analysis) -> pd.DataFrame:
    """The claims under each metric, each metric in words, without the metrics that repeat
    another in every run (:func:`repeats_sentence` names them)."""
    shown = [(claim, metric) not in a.repeats for claim, metric in zip(a.metrics["claim"], a.metrics["metric"])]
    return a.metrics.assign(
        metric=claim_labels(a.tables, a.metrics), median_sd=a.metrics["median_sd"].map(number),
        declared=a.metrics["declared"].map({True: "yes", False: ""}),
    )[shown]  # fmt: skip


def repeats_sentence(a: Analysis) -> str:
    """The one line naming the metrics left out of :func:`metrics_table` and the one each equals."""
    labels = dict(zip(zip(a.metrics["claim"], a.metrics["metric"]), claim_labels(a.tables, a.metrics)))
    same = dict.fromkeys(f"the {labels[key]}, equal to the {labels[(key[0], kept)]}" for key, kept in a.repeats.items())
    return f"Left out as equal in every run to a metric shown: {'; '.join(same)}." if same else ""


def _display_tables(a: Analysis) -> dict[str, Table]:
    s = a.summary
    finals = a.tables.finals
    final = pd.DataFrame({
        "variant": s["variant"],
        "finished / runs": s["n_done"].astype(str) + " / " + s["n_runs"].astype(str),
        "final test bpd [95% CI]": [with_ci(*r) for r in zip(s["final_mean"], s["final_ci_low"], s["final_ci_high"])],
        "std": s["final_std"].map(bpd),
        "best test bpd [95% CI]": [with_ci(*r) for r in zip(s["best_mean"], s["best_ci_low"], s["best_ci_high"])],
        "parameters": s["n_params"].map(lambda n: "" if pd.isna(n) else f"{int(n):,}"),
        "wall time / run": s["wall_time_mean"].map(duration),
    })  # fmt: skip
    r = a.ranking
    ranking = pd.DataFrame({
        "rank": r.get("rank", pd.Series(dtype=int)), "variant": r.get("variant", pd.Series(dtype=str)),
        "final test bpd": r.get("final_mean", pd.Series(dtype=float)).map(bpd),
        "significantly better than": r.get("significantly_better_than", pd.Series(dtype=str)),
        "not distinguishable from": r.get("not_distinguishable_from", pd.Series(dtype=str)),
    })  # fmt: skip
    p = a.pairs
    pairs = pd.DataFrame({
        "a": p["a"], "b": p["b"], "n a / b": p["n_a"].astype("Int64").astype(str) + " / " + p["n_b"].astype("Int64").astype(str),
        "a - b (bpd)": p["diff"].map(bpd),
        "95% CI": [f"[{bpd(lo)}, {bpd(hi)}]" if np.isfinite(lo) else "n/a" for lo, hi in zip(p["ci_low"], p["ci_high"])],
        "t": p["t"].map(lambda t: f"{t:.2f}" if np.isfinite(t) else "n/a"),
        "df": p["df"].map(lambda d: f"{d:.1f}" if np.isfinite(d) else "n/a"),
        "p": p["p_value"].map(p_text), "p (Holm)": p["p_holm"].map(p_text),
        "significant": p["significant"].map({True: "yes", False: "no"}),
    })  # fmt: skip
    t = a.threshold
    threshold = pd.DataFrame({
        "variant": t["variant"], "reached / runs": t["n_reached"].astype(str) + " / " + t["n_runs"].astype(str),
        "steps [95% CI]": [with_ci(*r, digits=0) for r in zip(t["steps_mean"], t["steps_ci_low"], t["steps_ci_high"])],
        "wall time": t["wall_time_mean"].map(duration),
    })  # fmt: skip
    d = a.divergence
    divergence = pd.DataFrame({
        "variant": d["variant"], "diverged / ended": d["n_diverged"].astype(str) + " / " + d["n"].astype(str),
        "rate": d["rate"].map(lambda x: "n/a" if pd.isna(x) else f"{x:.2f}"),
        "95% Wilson CI": [f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "n/a" for lo, hi in zip(d["ci_low"], d["ci_high"])],
    })  # fmt: skip
    count_columns = [c for c in finals.columns if c.startswith("n_events_")]
    events = finals.groupby("variant", sort=False)[count_columns].sum().reset_index()
    events.columns = ["variant", *[c.removeprefix("n_events_") for c in count_columns]]
    event_list = a.tables.events[["variant", "seed", "step", "kind", "value", "threshold", "layer"]].head(50)
    problems = finals[finals["state"] != RunState.DONE]
    problems = problems[["run_id", "variant", "seed", "state", "step", "first_nonfinite_step", "error"]].copy()
    problems["error"] = problems["error"].fillna("").astype(str).str.slice(0, 160)
    problems[["step", "first_nonfinite_step"]] = problems[["step", "first_nonfinite_step"]].astype("Int64")
    c = a.comparison
    comparison = pd.DataFrame({
        "variant": c["variant"], "pipeline": c["dataset"] + " " + c["pipeline"], "ours": c["ours"].map(bpd),
        "n": c["n"], "published": c["reference"] + c["kind"].map(lambda k: f" ({k})" if k else ""),
        "theirs": c["theirs"].map(bpd), "ours - theirs": c["difference"].map(bpd), "why not": c["why_not"],
        "source": c["source"],
    })  # fmt: skip
    env = [c for c in finals.columns if c.startswith("env_") and c != "env_started"]
    hardware = pd.DataFrame({
        "item": [c.removeprefix("env_") for c in env],
        "value (runs)": [", ".join(f"{v} ({n})" for v, n in finals[c].astype(str).value_counts().items()) for c in env],
    })  # fmt: skip
    runs = finals[["variant", "seed", "run_id", "state", "step"]].assign(
        final_test_bpd=finals["final_test_bpd"].map(bpd), wall_time=finals["wall_time"].map(duration)
    )
    tables = {
        "verdicts": Table("verdicts", claims_table(a.claims)),
        "verdict_pairs": Table("verdict_pairs", pairs_table(pair_rows(a.verdicts))),
        "verdict_metrics": Table("verdict_metrics", metrics_table(a)),
        "final_bpd": Table("final_bpd", final),
        "ranking": Table("ranking", ranking),
        "pairwise": Table("pairwise", pairs),
        "threshold": Table("threshold", threshold),
        "divergence": Table("divergence", divergence),
        "event_counts": Table("event_counts", events),
        "events": Table("events", event_list),
        "problem_runs": Table("problem_runs", problems),
        "comparable": Table("comparable", comparison[c["comparable"]].drop(columns="why not")),
        "incomparable": Table("incomparable", comparison[~c["comparable"]]),
        "fidelity": Table("fidelity", fidelity_table()),
        "differences": Table("differences", a.differences.assign(swept=a.differences["swept"].map({True: "yes", False: "no"}))),
        "shared_settings": Table("shared_settings", shared_settings(a.tables.configs)),
        "hardware": Table("hardware", hardware),
        "runs": Table("runs", runs),
    }  # fmt: skip
    return tables


# --------------------------------------------------------------------------- figures


def _make_figures(a: Analysis, out: Path) -> list[FigureFile]:
    """Draw and save every figure record that applies to this study."""
    records = [record for record in figures.FIGURES if record.applies(a)]
    made = []
    for record in tqdm(records, desc="figures", unit="fig", disable=None, leave=False):
        png, _ = figures.save_figure(record.draw(a), out / "figures", record.name)
        made.append(FigureFile(record.name, record.caption_for(a), png, f"figures/{png.name}", record.after))
    return made


def _copy_samples(a: Analysis, results_dir: Path, out: Path) -> list[list[FigureFile]]:
    """Sample grids, reconstructions and interpolations of one finished run per variant,
    grouped per variant (temperature grid first) so the report shows a variant on one row."""
    order = {"temperatures": 0, "reconstructions": 1, "interpolation": 2}
    groups = []
    done = a.tables.finals[a.tables.finals["state"] == RunState.DONE]
    for _, run in done.drop_duplicates("variant").iterrows():
        temperatures = a.tables.configs.set_index("run_id").loc[run["run_id"], "train.sample_temperatures"]
        shown = shown_images(StudyDir(results_dir).run(run["run_id"]).samples)
        group = []
        for name in sorted(shown, key=lambda name: (order.get(name, len(order)), name)):
            png = shown[name]
            target = out / "figures" / "samples" / f"{run['run_id']}_{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            what = f"one row per temperature {temperatures}" if name == "temperatures" else name
            caption = f"`{run['variant']}`, seed {run['seed']}: {what}."
            group.append(FigureFile(target.stem, caption, target, f"figures/samples/{target.name}"))
        if group:
            groups.append(group)
    return groups


def manipulation_records(results_dir: Path, tables: Tables) -> list[dict]:
    """The readable ``manipulate_*.json`` records under ``results/<study>/manipulations/``
    whose figure is there too, in the study's order of attributes, then of variants."""
    records = []
    for path in sorted(StudyDir(results_dir).manipulations.glob("*/manipulate_*.json")):
        try:
            record = read_json(path, expect=dict)
        except UnreadableFileError:
            continue
        png = shown_image(path.with_suffix(".png"))
        if png.is_file() and {"attribute", "variant", "held_out"} <= set(record):
            records.append({**record, "png": png})
    asked = list(tables.study.get("manipulations") or [])
    variants = list(tables.finals["variant"].unique())

    def place(record: dict) -> tuple:
        attribute, variant = record["attribute"], record["variant"]
        return (asked.index(attribute) if attribute in asked else len(asked), attribute,
                variants.index(variant) if variant in variants else len(variants), variant)  # fmt: skip

    return sorted(records, key=place)


def manipulation_blocks(results_dir: Path, tables: Tables, out: Path) -> list[Block]:
    """The manipulation section's note, table (also ``tables/manipulations.csv``) and figures
    (one row per attribute, the variants side by side); empty when the study layer wrote none."""
    records = manipulation_records(results_dir, tables)
    if not records:
        return []
    name = "manipulations"  # the report's table, its CSV and its figures' folder
    rows, groups = [], {}
    for r in records:
        held = r["held_out"]
        rows.append({
            "attribute": r["attribute"], "variant": r["variant"], "seed": r.get("seed", ""),
            "direction norm": number(r["direction_norm"]),
            "train images (+ / −)": f"{r['train_images']['positive']} / {r['train_images']['negative']}",
            "held-out images (+ / −)": f"{held['n_positive']} / {held['n_negative']}",
            "held-out mean projection (+ / −)": f"{number(held['mean_positive'])} / {number(held['mean_negative'])}",
            "separation (pooled SD)": number(held["gap_in_sd"]),
        })  # fmt: skip
        target = out / "figures" / name / f"{r['png'].parent.name}_{r['png'].name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r["png"], target)
        alphas = ", ".join(f"{alpha:g}" for alpha in r["alphas"])
        caption = (f"`{r['variant']}`, seed {r.get('seed', '?')}: `{r['attribute']}`; rows are test images, moved "
                   f"along the direction by alpha {alphas} (0: the reconstruction).")  # fmt: skip
        figure = FigureFile(target.stem, caption, target, f"figures/{name}/{target.name}")
        groups.setdefault(r["attribute"], []).append(figure)
    frame = pd.DataFrame(rows)
    csv = out / "tables" / f"{name}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    limit = records[0].get("image_limit")
    encoded = f"the first {limit} training images" if limit else "the training images"
    return [
        Paragraphs(
            [
                f"Semantic manipulation (Glow, section 5.3) on each variant's finished run of the lowest seed: "
                f"the direction is the mean latent (all levels) of an attribute's positives minus that of its "
                f"negatives among {encoded}, and its separation is the gap between the two groups' mean "
                "projections onto it on as many held-out test images, in pooled standard deviations "
                "(`glow-repro manipulate`)."
            ],
            "note",
        ),
        Table(name, frame, Files([(csv, f"tables/{csv.name}")])),
        SampleRows(list(groups.values())),
    ]


# --------------------------------------------------------------------------- build


def _reproduce_commands(tables: Tables, results_dir: Path) -> list[str]:
    spec = next((p for p in (Path("studies") / f"{tables.name}.yaml", Path("studies") / "paper" / f"{tables.name}.yaml")
                 if p.is_file()), StudyDir(results_dir).study_file)  # fmt: skip
    return [f"glow-repro run {spec}", f"glow-repro status {results_dir}", f"glow-repro report {results_dir}"]


def run_commits(finals: pd.DataFrame) -> list[str]:
    """The git commits the runs were trained at (from their ``environment.json``), in order."""
    return list(finals.get("env_git_commit", pd.Series(dtype=str)).dropna().astype(str).unique())


def _setup_facts(tables: Tables) -> dict[str, str]:
    finals = tables.finals
    wall = pd.to_numeric(finals["wall_time"], errors="coerce")
    return {
        "runs": f"{len(finals)} ({_states(finals)})",
        "total training time": f"{duration(wall.sum())} over all runs; {duration(wall.median())} median per run",
        "code commit": ", ".join(run_commits(finals)) or "not recorded",
    }


def _comparison_blocks(a: Analysis, tables: dict[str, Table]) -> list[Block]:
    """The ranking and every pairwise test, or why there is no comparison."""
    if no_comparison(a):
        return [Paragraphs([no_comparison(a)])]
    tested = int(a.pairs["p_value"].notna().sum())
    why = " (a t-test needs two finished runs of each variant)"
    family = ("no pair could be tested" + why if tested == 0 else
              f"p-values are Holm-corrected over all {tested} pairs" if tested == len(a.pairs) else
              f"p-values are Holm-corrected over the {tested} pairs that could be tested" + why)  # fmt: skip
    return [
        Paragraphs(["Descriptive, not the verdict test: differences of mean final test bpd (a − b) between every "
                    "two variants with Welch's unequal-variance t-test, unpaired, and its 95% interval; "
                    f"{family}; \"significant\" means Holm-adjusted p < 0.05. The verdicts (section 1) pair "
                    "runs by seed and use each claim's own metric, so a pair may be not significant here and "
                    "resolved there."], "note"),
        tables["ranking"],
        Fold("All pairwise comparisons", [tables["pairwise"]], open=True),
    ]  # fmt: skip


def report_sections(
    a: Analysis,
    tables: dict[str, Table],
    samples: list[list[FigureFile]],
    commands: list[str],
    study_yaml: str,
    manipulation: list[Block] | None = None,
) -> list[Section]:
    """The report's sections, each sentence written once for both HTML and Markdown;
    figures are placed afterwards by their records (:func:`place_figures`). ``manipulation``
    (:func:`manipulation_blocks`) makes the manipulation section when there is one."""
    events, problems, comparable = tables["events"].frame, tables["problem_runs"].frame, tables["comparable"].frame
    threshold = a.threshold["threshold"].iloc[0] if len(a.threshold) else float("nan")
    samples_blocks = [Heading("Samples"), SampleRows(samples)] if samples else []
    margin_note = (" A pair `a < b + m` is a claim with a margin m: a is not worse than b by more than m bpd, "
                   "so an effect above -m supports it." if len(a.verdicts) and (a.verdicts["margin"] > 0).any()
                   else "")  # fmt: skip
    boundary = "".join(f" Decision boundary: {b}." for b in a.claims["boundary"].dropna().unique())
    verdict_blocks = [
        Paragraphs(["Each claim the study declares, tested pair by pair with a paired test on seed-matched "
                    "differences of the claim's own metric: each pair is judged at the p threshold of its look, "
                    "and its interval is at the level of that decision (named in the column header). A claim "
                    "is *reproduced*, *contradicted*, *absent* (no effect as large as its min effect) or "
                    "*inconclusive* by the rules of docs/verdicts.md, which also explains the power figures "
                    "and `glow-repro run --until-resolved`. The effect is in the claimed direction (positive "
                    "supports the claim); the weakest pair is shown, every pair below. " + SEED_VARIANCE
                    + boundary + margin_note], "note"),
        tables["verdicts"],
        Fold(f"Every pair: the paired test on its claim's metric ({len(tables['verdict_pairs'].frame)})",
             [tables["verdict_pairs"]]),
        *([Fold("The same claims under the other metrics", [
            Paragraphs(["Each order claim judged again with the last evaluation, the best one and the mean "
                        "of the last evaluations as its metric, at the same alpha: a verdict that changes "
                        "with the metric rests on evaluation noise (docs/verdicts.md, \"Metrics\"). The "
                        "claim's own metric is marked.", *filter(None, [repeats_sentence(a)])], "note"),
            tables["verdict_metrics"]])] if len(a.metrics) else []),
    ] if len(a.verdicts) else [
        Paragraphs(["This study declares no claims, so there is no verdict: list the paper's claims under "
                    "`claims:` in the study file (docs/verdicts.md)."]),
    ]  # fmt: skip
    return [
        Section("verdicts", "Verdicts on the paper's claims", verdict_blocks),
        Section("summary", "Summary", [Paragraphs(summary_paragraphs(a), "abstract")]),
        Section(
            "setup",
            "Setup",
            [
                Facts(_setup_facts(a.tables)),
                Heading("What differs between runs"),
                Paragraphs(
                    [
                        "Config keys whose resolved values differ across runs; *swept* keys define the variants, "
                        "the others (seed, thread count) do not."
                    ],
                    "note",
                ),
                tables["differences"],
                Fold(
                    f"Settings shared by all runs ({len(tables['shared_settings'].frame)} keys)",
                    [tables["shared_settings"]],
                ),
                Heading("Hardware and versions"),
                tables["hardware"],
            ],
        ),
        Section(
            "results",
            "Results",
            [
                Heading("Final test bpd"),
                Paragraphs(
                    [
                        "Mean over finished runs with a two-sided 95% Student-t interval; diverged and failed runs "
                        "are excluded here and counted under Stability.",
                        left_out_sentence(a.tables.finals, named=a.tables.left_out),
                    ],
                    "note",
                ),
                tables["final_bpd"],
                Heading("Ranking and pairwise comparisons"),
                *_comparison_blocks(a, tables),
                Heading(f"Time to reach {threshold:.2f} bpd" if is_number(threshold) else "Time to reach a threshold"),
                Paragraphs(
                    [
                        "First evaluation at or below the worst variant's mean final bpd (rounded up); mean over "
                        "the runs that reached it."
                    ],
                    "note",
                ),
                tables["threshold"],
                *samples_blocks,
            ],
        ),
        *([Section("manipulation", "Manipulation", manipulation)] if manipulation else []),
        Section(
            "stability",
            "Stability",
            [
                tables["divergence"],
                Heading("Stability events per variant"),
                *(
                    [tables["event_counts"], Fold(f"First {len(events)} events", [tables["events"]])]
                    if len(events)
                    else [Paragraphs(["The stability monitor recorded no events."])]
                ),
                Heading("Runs that did not finish normally"),
                tables["problem_runs"] if len(problems) else Paragraphs(["None: every run finished."]),
            ],
        ),
        Section(
            "published",
            "Comparison with published numbers",
            [
                Paragraphs(
                    [
                        "Our mean final test bpd per variant beside each published number for the same dataset. "
                        "A pair is comparable only when the data pipelines match: dataset, image size, channels, "
                        "n_bits and the full test split."
                    ],
                    "note",
                ),
                tables["comparable"]
                if len(comparable)
                else Paragraphs(["No published number matches this study's pipeline."]),
                Fold(
                    f"Published numbers that are not comparable, and why ({len(tables['incomparable'].frame)})",
                    [tables["incomparable"]],
                ),
            ],
        ),
        Section(
            "fidelity",
            "Fidelity to the paper and the official code",
            [
                Paragraphs(
                    [
                        "Where the paper and github.com/openai/glow differ, what glow-repro does by default and the "
                        "config key that switches it (also in docs/fidelity.md)."
                    ],
                    "note",
                ),
                tables["fidelity"],
            ],
        ),
        Section(
            "reproduce",
            "How to reproduce",
            [
                Code("\n".join(commands)),
                Fold("The study spec as run (`study.yaml`)", [Code(study_yaml, "yaml")]),
                Fold(f"Run ids ({len(tables['runs'].frame)} runs)", [tables["runs"]]),
            ],
        ),
    ]


def _write_latex_tables(a: Analysis, display: dict[str, Table], tables_dir: Path) -> None:
    """Write each of :data:`LATEX_TABLES` the report shows as ``<name>.tex`` and link it, with
    its CSV, below the table."""
    for name, (tex, csv, caption) in LATEX_TABLES.items():
        table = display[name]
        if not len(table.frame) or (name == "pairwise" and no_comparison(a)):
            continue
        path = write_latex(table.frame, tables_dir / f"{tex}.tex", caption, f"tab:{a.tables.name}:{tex}")
        table.files = Files([(tables_dir / f"{csv}.csv", f"tables/{csv}.csv"), (path, f"tables/{path.name}")])


def environment() -> Environment:
    """The templates of the pages glow-repro writes (``templates/``), with the ``inline`` filter."""
    env = Environment(loader=PackageLoader("glow_repro.analysis", "templates"), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)  # fmt: skip
    env.filters["inline"] = inline_html
    return env


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of ``results_dir`` into ``out_dir`` (default ``reports/<study name>``);
    return the path of report.html."""
    results_dir = Path(results_dir)
    tables = load_tables(results_dir)
    out = Path(out_dir) if out_dir is not None else Path("reports") / tables.name
    manifest = read_manifest(results_dir) or {}
    a = dataclasses.replace(
        analyse(tables, *recorded_look(results_dir)),
        planned_variants=len({run["variant"] for run in manifest.get("runs", {}).values()}) or None,
        specs=max(len(manifest.get("specs", [])), 1),
    )
    out.mkdir(parents=True, exist_ok=True)
    figure_files = _make_figures(a, out)
    samples = _copy_samples(a, results_dir, out)
    display = _display_tables(a)
    write_tables(tables, out / "tables")
    raw = {"summary": a.summary, "curves": a.curves, "pairwise": a.pairs, "ranking": a.ranking,
           "divergence": a.divergence, "threshold": a.threshold, "factor_effects": a.effects,
           "comparison": a.comparison, "config_differences": a.differences, "verdicts": a.verdicts,
           "verdict_claims": a.claims, "verdict_metrics": a.metrics,
           "fidelity": display["fidelity"].frame, "shared_settings": display["shared_settings"].frame}  # fmt: skip
    for name, frame in raw.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False)
    _write_latex_tables(a, display, out / "tables")
    study_file = StudyDir(results_dir).study_file
    study_yaml = study_file.read_text() if study_file.is_file() else ""
    manipulation = manipulation_blocks(results_dir, tables, out)
    commands = _reproduce_commands(tables, results_dir)
    sections = report_sections(a, display, samples, commands, study_yaml, manipulation)
    place_figures(sections, figure_files)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = {
        "title": f"Glow reproduction study: {tables.name}",
        "description": str(tables.study.get("description", "")),
        "meta": (f"Reproduces: {tables.study.get('reference', '') or 'n/a'} · results: `{results_dir}` · "
                 f"generated {generated} by glow-repro {__version__}"),
        "sections": sections,
    }  # fmt: skip
    env = environment()
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    html_path = out / "report.html"
    html_path.write_text(env.get_template("report.html.j2").render(**context))
    return html_path
