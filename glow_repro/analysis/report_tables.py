"""The report's tables as records (docs/architecture.md): each :class:`TableRecord` says what
the table is called, how to build its display text from the :class:`Analysis`, when it applies
to a study, the CSV of the numbers it shows and, for a paper, its LaTeX. The report builds
every record in :data:`TABLES` (:func:`build_tables`), so a new table is a build function and
one :func:`register` call here; with ``after`` it is placed in the report like a figure.

Cells are display text: numbers rounded as the report prints them
(:mod:`glow_repro.analysis.number_text`); the CSVs keep the numbers unrounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glow_repro.analysis.claim_view import claim_labels, interval_column, pair_rows, threshold_text
from glow_repro.analysis.document import Files, Table
from glow_repro.analysis.latex import write_latex
from glow_repro.analysis.number_text import bpd, p_text, with_ci
from glow_repro.analysis.prose import no_comparison
from glow_repro.analysis.published import fidelity_table
from glow_repro.analysis.study_analysis import Analysis
from glow_repro.analysis.verdicts import number, seeds_text
from glow_repro.run.rundir import RunState
from glow_repro.study.labels import duration
from glow_repro.study.tables import shared_settings


@dataclass(frozen=True)
class Latex:
    """A table also written as ``tables/<name>.tex`` for a paper; ``caption`` is LaTeX as
    given (write ``95\\%``)."""

    name: str
    caption: str


def _always(a: Analysis) -> bool:
    return True


@dataclass(frozen=True)
class TableRecord:
    """One report table. ``name``: its anchor (figures and tables placed ``after`` it);
    ``build``: its display text, for any study (an empty frame when there is nothing), or
    None for numbers the report writes but does not show as a table (a figure's, a
    sentence's); ``applies``: whether the report shows it; ``csv``: ``tables/<csv>.csv``,
    written for every study, holding ``numbers`` (default: the table as shown); ``latex``:
    also written as LaTeX when it applies and has rows, and then linked below the table with
    its CSV; ``after``: the section id or table name it follows, or empty when a section of
    :mod:`glow_repro.analysis.sections` places it itself."""

    name: str
    build: Callable[[Analysis], pd.DataFrame] | None = None
    applies: Callable[[Analysis], bool] = _always
    csv: str = ""
    numbers: Callable[[Analysis], pd.DataFrame] | None = None
    latex: Latex | None = None
    after: str = ""

    def files(self) -> list[str]:
        """The names it takes: its own, its CSV's and its LaTeX's."""
        csv = [f"tables/{self.csv}.csv"] if self.csv else []
        return [self.name, *csv, *([f"tables/{self.latex.name}.tex"] if self.latex else [])]


#: Every table the report may show, built in this order.
TABLES: list[TableRecord] = []


def register(record: TableRecord) -> TableRecord:
    """Add ``record`` to :data:`TABLES`; names and file names must be distinct, and a record
    that is not shown must have numbers to write."""
    if record.build is None and not (record.csv and record.numbers):
        raise ValueError(f"table {record.name!r}: give it a build function, or a csv and the numbers to write there")
    for other in TABLES:
        taken = set(other.files()) & set(record.files())
        if taken:
            raise ValueError(f"table {record.name!r}: {', '.join(sorted(taken))} registered already by {other.name!r}")
    TABLES.append(record)
    return record


def build_tables(a: Analysis, tables_dir: Path) -> dict[str, Table]:
    """Build every record, write its CSV and LaTeX under ``tables_dir``; return the tables
    that apply to the study by name."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    shown = {}
    for record in TABLES:
        frame = record.build(a) if record.build else None
        if record.csv:
            numbers = record.numbers(a) if record.numbers else frame
            assert numbers is not None, "register() refuses a CSV with nothing to write"
            numbers.to_csv(tables_dir / f"{record.csv}.csv", index=False)
        if frame is None or not record.applies(a):
            continue
        table = shown[record.name] = Table(record.name, frame, after=record.after)
        if record.latex and len(frame):
            tex = record.latex.name
            path = write_latex(frame, tables_dir / f"{tex}.tex", record.latex.caption, f"tab:{a.tables.name}:{tex}")
            csv = [(tables_dir / f"{record.csv}.csv", f"tables/{record.csv}.csv")] if record.csv else []
            table.files = Files([*csv, (path, f"tables/{path.name}")])
    return shown


# --------------------------------------------------------------------------- claims


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The verdict on each claim (rows of :func:`claim_rows`) as text: its outcome, its metric
    in words, the weakest pair's effect with its interval at the level the pair was judged at,
    that pair's p and threshold."""
    header, effects = interval_column(claims)
    return pd.DataFrame(
        {
            "claim": claims["claim"],
            "source": claims["source"],
            "verdict": claims["verdict"],
            "outcome": claims["outcome"],
            "metric": claims["metric_label"],
            "weakest pair": claims["weakest"],
            header: effects,
            "p": claims["p"].map(number),
            "p threshold": claims["threshold"].map(threshold_text),
            "min effect": claims["min_effect"].map(number),
            "seeds": claims["seeds"].astype(str),
            "seeds needed": claims["seeds_needed"].map(seeds_text),
        }
    )


def pairs_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Every pair's paired test on its claim's metric (rows of :func:`pair_rows`) as text."""
    header, effects = interval_column(pairs)
    return pd.DataFrame(
        {
            "claim": pairs["claim"],
            "within": pairs["within"],
            "pair": pairs["pair"],
            "pair verdict": pairs["pair_verdict"].astype(object).fillna("-"),
            header: effects,
            "p": pairs["p"].map(number),
            "p threshold": pairs["threshold"].map(threshold_text),
            "seeds": pairs["seeds"].astype(str),
            "mde": pairs["mde"].map(lambda v: "none" if np.isinf(v) else number(v)),
            "seeds needed": pairs["seeds_needed"].map(seeds_text),
        }
    )


def metrics_table(a: Analysis) -> pd.DataFrame:
    """The claims under each metric, each metric in words, without the metrics that repeat
    another in every run (:func:`glow_repro.analysis.prose.repeats_sentence` names them)."""
    shown = [(claim, metric) not in a.repeats for claim, metric in zip(a.metrics["claim"], a.metrics["metric"])]
    return a.metrics.assign(
        metric=claim_labels(a.tables, a.metrics),
        median_sd=a.metrics["median_sd"].map(number),
        declared=a.metrics["declared"].map({True: "yes", False: ""}),
    )[shown]


def _has_claims(a: Analysis) -> bool:
    return bool(len(a.verdicts))


register(
    TableRecord(
        "verdicts",
        lambda a: claims_table(a.claims),
        applies=_has_claims,
        csv="verdict_claims",
        numbers=lambda a: a.claims,
        latex=Latex(
            "verdicts",
            "Verdict on each claim from paired tests on its own metric: its outcome, the weakest "
            "pair's effect with its interval at the level the pair was judged at (in the column header), that "
            "pair's p and threshold, and the seeds needed.",
        ),
    )
)
register(
    TableRecord(
        "verdict_pairs",
        lambda a: pairs_table(pair_rows(a.verdicts)),
        applies=_has_claims,
        csv="verdicts",
        numbers=lambda a: a.verdicts,
    )
)
register(
    TableRecord(
        "verdict_metrics",
        metrics_table,
        applies=lambda a: _has_claims(a) and bool(len(a.metrics)),
        csv="verdict_metrics",
        numbers=lambda a: a.metrics,
    )
)


# --------------------------------------------------------------------------- results


def _of(part: pd.Series, whole: pd.Series) -> pd.Series:
    """``3 / 4`` in each row."""
    return part.astype(str) + " / " + whole.astype(str)


def _with_cis(frame: pd.DataFrame, column: str, digits: int = 3) -> list[str]:
    """:func:`with_ci` of ``<column>_mean`` and its ``_ci_low`` and ``_ci_high`` in each row."""
    rows = zip(frame[f"{column}_mean"], frame[f"{column}_ci_low"], frame[f"{column}_ci_high"])
    return [with_ci(*row, digits=digits) for row in rows]


def final_bpd_table(a: Analysis) -> pd.DataFrame:
    """Final and best test bpd per variant with their intervals, parameters and wall time."""
    s = a.summary
    return pd.DataFrame(
        {
            "variant": s["variant"],
            "finished / runs": _of(s["n_done"], s["n_runs"]),
            "final test bpd [95% CI]": _with_cis(s, "final"),
            "std": s["final_std"].map(bpd),
            "best test bpd [95% CI]": _with_cis(s, "best"),
            "parameters": s["n_params"].map(lambda n: "" if pd.isna(n) else f"{int(n):,}"),
            "wall time / run": s["wall_time_mean"].map(duration),
        }
    )


def ranking_table(a: Analysis) -> pd.DataFrame:
    """The variants by mean final bpd, with those each is significantly better than."""
    r = a.ranking
    return pd.DataFrame(
        {
            "rank": r.get("rank", pd.Series(dtype=int)),
            "variant": r.get("variant", pd.Series(dtype=str)),
            "final test bpd": r.get("final_mean", pd.Series(dtype=float)).map(bpd),
            "significantly better than": r.get("significantly_better_than", pd.Series(dtype=str)),
            "not distinguishable from": r.get("not_distinguishable_from", pd.Series(dtype=str)),
        }
    )


def pairwise_table(a: Analysis) -> pd.DataFrame:
    """Every two variants' difference of mean final bpd with Welch's test (descriptive)."""
    p = a.pairs
    return pd.DataFrame(
        {
            "a": p["a"],
            "b": p["b"],
            "n a / b": _of(p["n_a"].astype("Int64"), p["n_b"].astype("Int64")),
            "a - b (bpd)": p["diff"].map(bpd),
            "95% CI": [
                f"[{bpd(lo)}, {bpd(hi)}]" if np.isfinite(lo) else "n/a" for lo, hi in zip(p["ci_low"], p["ci_high"])
            ],
            "t": p["t"].map(lambda t: f"{t:.2f}" if np.isfinite(t) else "n/a"),
            "df": p["df"].map(lambda d: f"{d:.1f}" if np.isfinite(d) else "n/a"),
            "p": p["p_value"].map(p_text),
            "p (Holm)": p["p_holm"].map(p_text),
            "significant": p["significant"].map({True: "yes", False: "no"}),
        }
    )


def threshold_table(a: Analysis) -> pd.DataFrame:
    """Steps and wall time each variant took to reach the threshold bpd."""
    t = a.threshold
    return pd.DataFrame(
        {
            "variant": t["variant"],
            "reached / runs": _of(t["n_reached"], t["n_runs"]),
            "steps [95% CI]": _with_cis(t, "steps", digits=0),
            "wall time": t["wall_time_mean"].map(duration),
        }
    )


def _has_comparison(a: Analysis) -> bool:
    return not no_comparison(a)


register(
    TableRecord(
        "final_bpd",
        final_bpd_table,
        csv="summary",
        numbers=lambda a: a.summary,
        latex=Latex(
            "final_bpd",
            r"Final test bits per dimension per variant: mean over finished runs with a two-sided "
            r"95\% Student-t interval.",
        ),
    )
)
register(TableRecord("ranking", ranking_table, applies=_has_comparison, csv="ranking", numbers=lambda a: a.ranking))
register(
    TableRecord(
        "pairwise",
        pairwise_table,
        applies=_has_comparison,
        csv="pairwise",
        numbers=lambda a: a.pairs,
        latex=Latex(
            "pairwise",
            r"Descriptive, not the verdict test: differences of mean final test bpd ($a - b$) with "
            r"Welch's unpaired t-test and its 95\% interval; p-values Holm-corrected over all pairs.",
        ),
    )
)
register(TableRecord("threshold", threshold_table, csv="threshold", numbers=lambda a: a.threshold))
# Numbers the report shows as a figure (the test-bpd curves) and in the summary (each swept
# key's order), not as a table.
register(TableRecord("curves", csv="curves", numbers=lambda a: a.curves))
register(TableRecord("factor_effects", csv="factor_effects", numbers=lambda a: a.effects))


# --------------------------------------------------------------------------- stability


def divergence_table(a: Analysis) -> pd.DataFrame:
    """Share of the ended runs of each variant that diverged, with its Wilson interval."""
    d = a.divergence
    return pd.DataFrame(
        {
            "variant": d["variant"],
            "diverged / ended": _of(d["n_diverged"], d["n"]),
            "rate": d["rate"].map(lambda x: "n/a" if pd.isna(x) else f"{x:.2f}"),
            "95% Wilson CI": [
                f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "n/a" for lo, hi in zip(d["ci_low"], d["ci_high"])
            ],
        }
    )


def event_counts_table(a: Analysis) -> pd.DataFrame:
    """The stability monitor's events of each kind, summed over a variant's runs."""
    finals = a.tables.finals
    count_columns = [c for c in finals.columns if c.startswith("n_events_")]
    events = finals.groupby("variant", sort=False)[count_columns].sum().reset_index()
    events.columns = ["variant", *[c.removeprefix("n_events_") for c in count_columns]]
    return events


def events_table(a: Analysis) -> pd.DataFrame:
    """The first 50 stability events."""
    return a.tables.events[["variant", "seed", "step", "kind", "value", "threshold", "layer"]].head(50)


def problem_runs_table(a: Analysis) -> pd.DataFrame:
    """The runs that did not finish, with where they stopped and their error."""
    finals = a.tables.finals
    problems = finals[finals["state"] != RunState.DONE]
    problems = problems[["run_id", "variant", "seed", "state", "step", "first_nonfinite_step", "error"]].copy()
    problems["error"] = problems["error"].fillna("").astype(str).str.slice(0, 160)
    problems[["step", "first_nonfinite_step"]] = problems[["step", "first_nonfinite_step"]].astype("Int64")
    return problems


def _has_events(a: Analysis) -> bool:
    return bool(len(a.tables.events))


register(TableRecord("divergence", divergence_table, csv="divergence", numbers=lambda a: a.divergence))
register(TableRecord("event_counts", event_counts_table, applies=_has_events))
register(TableRecord("events", events_table, applies=_has_events))
register(
    TableRecord(
        "problem_runs",
        problem_runs_table,
        applies=lambda a: bool((a.tables.finals["state"] != RunState.DONE).any()),
    )
)


# --------------------------------------------------------------------------- published numbers and fidelity


def comparison_table(a: Analysis) -> pd.DataFrame:
    """Our mean final bpd beside every published number for the dataset, and why a pair is
    not comparable."""
    c = a.comparison
    return pd.DataFrame(
        {
            "variant": c["variant"],
            "pipeline": c["dataset"] + " " + c["pipeline"],
            "ours": c["ours"].map(bpd),
            "n": c["n"],
            "published": c["reference"] + c["kind"].map(lambda k: f" ({k})" if k else ""),
            "theirs": c["theirs"].map(bpd),
            "ours - theirs": c["difference"].map(bpd),
            "why not": c["why_not"],
            "source": c["source"],
        }
    )


register(
    TableRecord(
        "comparable",
        lambda a: comparison_table(a)[a.comparison["comparable"]].drop(columns="why not"),
        applies=lambda a: bool(a.comparison["comparable"].any()),
        csv="comparison",
        numbers=lambda a: a.comparison,
        latex=Latex("comparison", "Our mean final test bpd beside published numbers for the same data pipeline."),
    )
)
register(TableRecord("incomparable", lambda a: comparison_table(a)[~a.comparison["comparable"]]))
register(TableRecord("fidelity", lambda a: fidelity_table(), csv="fidelity"))


# --------------------------------------------------------------------------- setup and runs


def hardware_table(a: Analysis) -> pd.DataFrame:
    """Each ``environment.json`` item with its values and how many runs had each."""
    finals = a.tables.finals
    env = [c for c in finals.columns if c.startswith("env_") and c != "env_started"]
    return pd.DataFrame(
        {
            "item": [c.removeprefix("env_") for c in env],
            "value (runs)": [
                ", ".join(f"{v} ({n})" for v, n in finals[c].astype(str).value_counts().items()) for c in env
            ],
        }
    )


def runs_table(a: Analysis) -> pd.DataFrame:
    """Every run with its id, state and final test bpd."""
    finals = a.tables.finals
    return finals[["variant", "seed", "run_id", "state", "step"]].assign(
        final_test_bpd=finals["final_test_bpd"].map(bpd), wall_time=finals["wall_time"].map(duration)
    )


register(
    TableRecord(
        "differences",
        lambda a: a.differences.assign(swept=a.differences["swept"].map({True: "yes", False: "no"})),
        csv="config_differences",
        numbers=lambda a: a.differences,
    )
)
register(TableRecord("shared_settings", lambda a: shared_settings(a.tables.configs), csv="shared_settings"))
register(TableRecord("hardware", hardware_table))
register(TableRecord("runs", runs_table))
