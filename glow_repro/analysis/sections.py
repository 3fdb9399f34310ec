"""The report's sections, one function each, in the order of a paper: verdicts, summary,
setup, results, manipulation (when the study asked for one), stability, comparison with
published numbers, fidelity to paper and official code, how to reproduce. Each writes its
notes once as blocks of :mod:`glow_repro.analysis.document` (rendered to HTML and Markdown)
around the tables of :mod:`glow_repro.analysis.report_tables` that apply to the study; the
sentences written from the numbers are in :mod:`glow_repro.analysis.prose`.
"""

from __future__ import annotations

from glow_repro.analysis.claim_view import SEED_VARIANCE
from glow_repro.analysis.document import (
    Block,
    Code,
    Facts,
    FigureFile,
    Fold,
    Heading,
    Paragraphs,
    SampleRows,
    Section,
    Table,
)
from glow_repro.analysis.number_text import is_number
from glow_repro.analysis.prose import (
    left_out_sentence,
    no_comparison,
    repeats_sentence,
    setup_facts,
    summary_paragraphs,
)
from glow_repro.analysis.study_analysis import Analysis


def report_sections(
    a: Analysis,
    tables: dict[str, Table],
    samples: list[list[FigureFile]],
    commands: list[str],
    study_yaml: str,
    manipulation: list[Block] | None = None,
) -> list[Section]:
    """The report's sections from the analysis and its tables (those that apply, by name);
    figures, and tables no section places, are placed afterwards by their records
    (:func:`glow_repro.analysis.document.place_after`). ``manipulation`` (the report's
    ``manipulation_blocks``) makes the manipulation section when there is one."""
    return [
        verdicts_section(a, tables),
        summary_section(a),
        setup_section(a, tables),
        results_section(a, tables, samples),
        *([Section("manipulation", "Manipulation", manipulation)] if manipulation else []),
        stability_section(tables),
        published_section(tables),
        fidelity_section(tables),
        reproduce_section(tables, commands, study_yaml),
    ]


def verdicts_section(a: Analysis, tables: dict[str, Table]) -> Section:
    """Each claim's verdict, every pair's test and the claims under the other metrics
    (docs/verdicts.md), or why there is no verdict."""
    if "verdicts" not in tables:
        no_claims = (
            "This study declares no claims, so there is no verdict: list the paper's claims under "
            "`claims:` in the study file (docs/verdicts.md)."
        )
        return Section("verdicts", "Verdicts on the paper's claims", [Paragraphs([no_claims])])
    boundary = "".join(f" Decision boundary: {b}." for b in a.claims["boundary"].dropna().unique())
    margin_note = (
        " A pair `a < b + m` is a claim with a margin m: a is not worse than b by more than m bpd, "
        "so an effect above -m supports it."
        if (a.verdicts["margin"] > 0).any()
        else ""
    )
    note = (
        "Each claim the study declares, tested pair by pair with a paired test on seed-matched "
        "differences of the claim's own metric: each pair is judged at the p threshold of its look, "
        "and its interval is at the level of that decision (named in the column header). A claim "
        "is *reproduced*, *contradicted*, *absent* (no effect as large as its min effect) or "
        "*inconclusive* by the rules of docs/verdicts.md, which also explains the power figures "
        "and `glow-repro run --until-resolved`. The effect is in the claimed direction (positive "
        "supports the claim); the weakest pair is shown, every pair below. "
    )
    other_metrics = (
        "Each order claim judged again with the last evaluation, the best one and the mean "
        "of the last evaluations as its metric, at the same alpha: a verdict that changes "
        'with the metric rests on evaluation noise (docs/verdicts.md, "Metrics"). The '
        "claim's own metric is marked."
    )
    blocks: list[Block] = [
        Paragraphs([note + SEED_VARIANCE + boundary + margin_note], "note"),
        tables["verdicts"],
        Fold(
            f"Every pair: the paired test on its claim's metric ({len(tables['verdict_pairs'].frame)})",
            [tables["verdict_pairs"]],
        ),
    ]
    if "verdict_metrics" in tables:
        notes = Paragraphs([other_metrics, *filter(None, [repeats_sentence(a)])], "note")
        blocks.append(Fold("The same claims under the other metrics", [notes, tables["verdict_metrics"]]))
    return Section("verdicts", "Verdicts on the paper's claims", blocks)


def summary_section(a: Analysis) -> Section:
    """The summary, written from the numbers (:func:`summary_paragraphs`)."""
    return Section("summary", "Summary", [Paragraphs(summary_paragraphs(a), "abstract")])


def setup_section(a: Analysis, tables: dict[str, Table]) -> Section:
    """The runs, the config keys that differ between them, the shared settings, the hardware."""
    differ = (
        "Config keys whose resolved values differ across runs; *swept* keys define the variants, "
        "the others (seed, thread count) do not."
    )
    return Section(
        "setup",
        "Setup",
        [
            Facts(setup_facts(a.tables)),
            Heading("What differs between runs"),
            Paragraphs([differ], "note"),
            tables["differences"],
            Fold(
                f"Settings shared by all runs ({len(tables['shared_settings'].frame)} keys)",
                [tables["shared_settings"]],
            ),
            Heading("Hardware and versions"),
            tables["hardware"],
        ],
    )


def results_section(a: Analysis, tables: dict[str, Table], samples: list[list[FigureFile]]) -> Section:
    """Final test bpd, the ranking and pairwise comparisons, the time to a threshold, samples."""
    threshold = a.threshold["threshold"].iloc[0] if len(a.threshold) else float("nan")
    samples_blocks: list[Block] = [Heading("Samples"), SampleRows(samples)] if samples else []
    final_note = (
        "Mean over finished runs with a two-sided 95% Student-t interval; diverged and failed runs "
        "are excluded here and counted under Stability."
    )
    threshold_note = (
        "First evaluation at or below the worst variant's mean final bpd (rounded up); mean over "
        "the runs that reached it."
    )
    return Section(
        "results",
        "Results",
        [
            Heading("Final test bpd"),
            Paragraphs([final_note, left_out_sentence(a.tables.finals, named=a.tables.left_out)], "note"),
            tables["final_bpd"],
            Heading("Ranking and pairwise comparisons"),
            *_comparison_blocks(a, tables),
            Heading(f"Time to reach {threshold:.2f} bpd" if is_number(threshold) else "Time to reach a threshold"),
            Paragraphs([threshold_note], "note"),
            tables["threshold"],
            *samples_blocks,
        ],
    )


def _comparison_blocks(a: Analysis, tables: dict[str, Table]) -> list[Block]:
    """The ranking and every pairwise test, or why there is no comparison."""
    if no_comparison(a):
        return [Paragraphs([no_comparison(a)])]
    tested = int(a.pairs["p_value"].notna().sum())
    why = " (a t-test needs two finished runs of each variant)"
    if tested == 0:
        family = "no pair could be tested" + why
    elif tested == len(a.pairs):
        family = f"p-values are Holm-corrected over all {tested} pairs"
    else:
        family = f"p-values are Holm-corrected over the {tested} pairs that could be tested" + why
    note = (
        "Descriptive, not the verdict test: differences of mean final test bpd (a − b) between every "
        "two variants with Welch's unequal-variance t-test, unpaired, and its 95% interval; "
        f'{family}; "significant" means Holm-adjusted p < 0.05. The verdicts (section 1) pair '
        "runs by seed and use each claim's own metric, so a pair may be not significant here and "
        "resolved there."
    )
    return [
        Paragraphs([note], "note"),
        tables["ranking"],
        Fold("All pairwise comparisons", [tables["pairwise"]], open=True),
    ]


def stability_section(tables: dict[str, Table]) -> Section:
    """Divergence rates, the stability monitor's events, the runs that did not finish."""
    events = (
        [tables["event_counts"], Fold(f"First {len(tables['events'].frame)} events", [tables["events"]])]
        if "events" in tables
        else [Paragraphs(["The stability monitor recorded no events."])]
    )
    return Section(
        "stability",
        "Stability",
        [
            tables["divergence"],
            Heading("Stability events per variant"),
            *events,
            Heading("Runs that did not finish normally"),
            tables.get("problem_runs") or Paragraphs(["None: every run finished."]),
        ],
    )


def published_section(tables: dict[str, Table]) -> Section:
    """Our final bpd beside the published numbers for the same pipeline, and those that are not."""
    note = (
        "Our mean final test bpd per variant beside each published number for the same dataset. "
        "A pair is comparable only when the data pipelines match: dataset, image size, channels, "
        "n_bits and the full test split."
    )
    return Section(
        "published",
        "Comparison with published numbers",
        [
            Paragraphs([note], "note"),
            tables.get("comparable") or Paragraphs(["No published number matches this study's pipeline."]),
            Fold(
                f"Published numbers that are not comparable, and why ({len(tables['incomparable'].frame)})",
                [tables["incomparable"]],
            ),
        ],
    )


def fidelity_section(tables: dict[str, Table]) -> Section:
    """Where the paper and the official code differ, and what glow-repro does."""
    note = (
        "Where the paper and github.com/openai/glow differ, what glow-repro does by default and the "
        "config key that switches it (also in docs/fidelity.md)."
    )
    return Section(
        "fidelity", "Fidelity to the paper and the official code", [Paragraphs([note], "note"), tables["fidelity"]]
    )


def reproduce_section(tables: dict[str, Table], commands: list[str], study_yaml: str) -> Section:
    """The commands that rebuild the study, the spec as run and every run id."""
    return Section(
        "reproduce",
        "How to reproduce",
        [
            Code("\n".join(commands)),
            Fold("The study spec as run (`study.yaml`)", [Code(study_yaml, "yaml")]),
            Fold(f"Run ids ({len(tables['runs'].frame)} runs)", [tables["runs"]]),
        ],
    )
