"""``glow-repro board``: every claim of several studies on one page (docs/verdicts.md, "The
claims board"). Reads results directories only; no torch."""

from __future__ import annotations

from pathlib import Path

import click

from glow_repro.commands.base import UserError, user_errors
from glow_repro.core.config import ConfigError
from glow_repro.errors import UserFacingError


@click.command("board")
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder for README.md and index.html; a study's report in OUT/<study>/report.html is linked")  # fmt: skip
@user_errors
def board_command(results_dirs: tuple[Path, ...], out_dir: Path) -> None:
    """Write OUT/README.md and OUT/index.html: every claim of every study in RESULTS_DIRS with
    its verdict, outcome, weakest pair's effect and interval at the decision level, min effect,
    seeds, boundary, the runs' git commit and a link to the study's report.

    Each RESULTS_DIR is a folder `glow-repro run` wrote for a study with claims, e.g.
    results/permutation_ablation.
    """
    import pandas as pd

    from glow_repro.analysis.board import StudyClaims, board_html, board_markdown, board_page, study_claims
    from glow_repro.study.tables import load_tables

    studies = []
    for results in results_dirs:
        if not results.is_dir():
            load_tables(results)  # its one-line error says what a results directory is
        try:
            tables = load_tables(results)
        except (UserFacingError, ConfigError) as err:  # a study this version cannot read stays, with why
            why = f"verdicts could not be computed: {err}"
            studies.append(StudyClaims(_study_name(results), pd.DataFrame(), error=why))
            continue
        if not tables.study.get("claims"):
            raise UserError(f"{results}: its study declares no claims; the board lists claims, so give results "
                            "directories of studies with `claims:` (docs/verdicts.md)")  # fmt: skip
        report = Path(tables.name) / "report.html"
        link = report.as_posix() if (out_dir / report).is_file() else None
        studies.append(study_claims(tables, results, link))
    board = board_page(studies)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.md").write_text(board_markdown(board))
    (out_dir / "index.html").write_text(board_html(board))
    click.echo(f"wrote {out_dir / 'README.md'} and {out_dir / 'index.html'}: "
               f"{len(board.frame)} claims of {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")  # fmt: skip


def _study_name(results: Path) -> str:
    """The name in a results directory's study.yaml, even one that no longer validates; else
    the directory's name."""
    import yaml

    from glow_repro.run.rundir import StudyDir

    try:
        name = yaml.safe_load(StudyDir(results).study_file.read_text()).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return name if isinstance(name, str) else results.name
