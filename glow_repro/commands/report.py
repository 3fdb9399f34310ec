"""``glow-repro report`` and ``glow-repro compare``: the paper-style report and the published
comparison of a results directory. Neither imports torch (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import click

from glow_repro.commands.base import user_errors, warn_about_results


@click.command("report")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="output folder [default: reports/<study name>]")  # fmt: skip
@user_errors
def report_command(results_dir: Path, out_dir: Path | None) -> None:
    """Write report.html (self-contained), report.md, figures/ and tables/ for RESULTS_DIR.

    RESULTS_DIR is the folder `glow-repro run` wrote, e.g. results/permutation_ablation.
    """
    from glow_repro.analysis.report import build_report
    from glow_repro.study.tables import left_out_runs

    path = build_report(results_dir, out_dir)
    warn_about_results(results_dir, left_out_runs(results_dir))
    click.echo(f"wrote {path} and {path.with_suffix('.md')} (figures/, tables/ beside them)")


@click.command("compare")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--all", "show_all", is_flag=True, help="also list published numbers that are not comparable")
@user_errors
def compare_command(results_dir: Path, show_all: bool) -> None:
    """Print our final test bpd per variant beside the published numbers for its dataset.

    Only pairs with the same data pipeline (dataset, image size, channels, n_bits, full test
    split) are comparable; --all also lists the others with the reason.
    """
    import pandas as pd

    from glow_repro.analysis.published import compare
    from glow_repro.study.tables import load_tables

    tables = load_tables(results_dir)
    warn_about_results(results_dir, tables.left_out)
    rows = compare(tables.finals, tables.configs)
    shown = rows if show_all else rows[rows["comparable"]]
    hidden = len(rows) - len(shown)
    if shown.empty:
        click.echo("No published number is comparable with this study's data pipeline.")
    else:
        columns = ["variant", "dataset", "pipeline", "n", "ours", "reference", "kind", "theirs", "difference"]
        columns += ["comparable", "why_not"] if show_all else []
        with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.precision", 3):
            click.echo(shown[columns].to_string(index=False))
    if hidden:
        reasons = rows.loc[~rows["comparable"], "why_not"].value_counts()
        click.echo(f"\n{hidden} published numbers are not comparable (--all lists them): "
                   + "; ".join(f"{reason} ({n})" for reason, n in reasons.head(3).items()))  # fmt: skip
