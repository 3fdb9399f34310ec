"""``glow-repro verdict``: the verdict on each claim of a study (docs/verdicts.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from glow_repro.commands.base import STUDY_GONE, UserError, user_errors, warn_about_results

if TYPE_CHECKING:
    import pandas as pd


def echo_verdicts(table: pd.DataFrame) -> None:
    """Print one line per claim, then the table of its pairs."""
    import pandas as pd

    from glow_repro.analysis.verdicts import format_verdicts

    if table.empty:
        click.echo("verdicts: the study declares no claims (claims: in the study file)")
        return
    from glow_repro.analysis.verdicts import claim_summary, number

    margins = table.groupby("claim", sort=False)["margin"].first()
    for row in claim_summary(table).itertuples():
        margin = margins[row.claim]
        size = f"margin {margin:g}" if margin else f"smallest effect of interest {number(row.min_effect)}"
        click.echo(
            f"{row.claim}: {row.verdict.upper()}: {row.outcome} ({row.source}; {row.boundary}, look threshold "
            f"p <= {number(row.threshold)}, alpha {table['alpha'].iloc[0]:g}; metric {row.metric}; {size})"
        )
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        click.echo(format_verdicts(table).drop(columns=["metric"]).to_string(index=False))


@click.command("verdict")
@click.argument("results_dir", type=click.Path(path_type=Path))
@user_errors
def verdict_command(results_dir: Path) -> None:
    """Print the verdict on each claim of the study in RESULTS_DIR: reproduced, contradicted,
    absent or inconclusive, with each pair's paired effect, its interval at the decision level,
    p against the look's threshold, the minimum detectable effect and the seeds a fixed design
    would need at the claim's smallest effect of interest (docs/verdicts.md)."""
    from glow_repro.analysis.sequential import results_verdicts
    from glow_repro.run.rundir import StudyDir
    from glow_repro.study.tables import load_tables

    tables = load_tables(results_dir)
    if not StudyDir(results_dir).study_file.is_file():  # the claims to judge are in it
        raise UserError(STUDY_GONE.format(results_dir=results_dir))
    warn_about_results(results_dir, tables.left_out)
    echo_verdicts(results_verdicts(results_dir, tables).table)
