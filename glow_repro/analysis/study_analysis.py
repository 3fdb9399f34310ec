"""Every number a study's report shows, computed once from its tables: the :class:`Analysis`
that the figures (:mod:`glow_repro.analysis.figures`), the tables
(:mod:`glow_repro.analysis.report_tables`) and the prose (:mod:`glow_repro.analysis.prose`)
read. Conventions of the aggregates are in :mod:`glow_repro.analysis.aggregate`, of the
verdicts in docs/verdicts.md; no torch (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glow_repro.analysis import aggregate
from glow_repro.analysis.claim_view import claim_rows, coinciding_metrics
from glow_repro.analysis.published import compare
from glow_repro.analysis.sequential import recorded_look
from glow_repro.analysis.verdicts import Look, metric_alternatives, study_verdicts
from glow_repro.study.runner import read_manifest
from glow_repro.study.tables import Tables, describe_differences, load_tables


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


def analyse_results(results_dir: Path) -> Analysis:
    """The analysis of a results directory: its tables judged at the look its seed record
    ends on, with the variants and specs its manifest plans."""
    tables = load_tables(results_dir)
    manifest = read_manifest(results_dir) or {}
    return dataclasses.replace(
        analyse(tables, *recorded_look(results_dir)),
        planned_variants=len({run["variant"] for run in manifest.get("runs", {}).values()}) or None,
        specs=max(len(manifest.get("specs", [])), 1),
    )
