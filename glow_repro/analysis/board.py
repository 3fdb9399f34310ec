"""The claims board: every claim of several studies on one page, ``README.md`` and
``index.html`` (docs/verdicts.md, "The claims board").

Pure: a study's tables in (:func:`study_claims`), a page model out (:func:`board_page`),
rendered to Markdown and HTML by the templates beside the report's. Each claim shows its
verdict and one-line outcome, the weakest pair's effect with its interval at the level it was
judged at, the claim's min effect, seeds and boundary, the commit its runs were trained at
(their ``environment.json``) and a link to the study's report. A study whose verdicts cannot
be computed stays on the board, with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from glow_repro.analysis.claim_view import SEED_VARIANCE, claim_rows, interval_column
from glow_repro.analysis.document import Table
from glow_repro.analysis.prose import run_commits
from glow_repro.analysis.report import environment
from glow_repro.analysis.sequential import results_verdicts
from glow_repro.analysis.verdicts import SUMMARY_COLUMNS, number
from glow_repro.errors import ResultsDirError
from glow_repro.study.tables import Tables


@dataclass
class StudyClaims:
    """One results directory on the board: its claims (rows of :func:`claim_rows`), the
    commits its runs were trained at, the link to its report (relative to the board), or why
    its verdicts could not be computed."""

    study: str
    claims: pd.DataFrame
    commits: list[str] = field(default_factory=list)
    report: str | None = None
    error: str = ""


@dataclass
class Board:
    """The page: ``frame`` holds one row of text per claim, ``links`` each row's report link."""

    frame: pd.DataFrame
    links: list[str | None]
    notes: list[str]


def study_claims(tables: Tables, results_dir: Path, report: str | None = None) -> StudyClaims:
    """The claims of one study at the look its seed-adding record ends on; a study whose
    claims, tables or record the verdicts cannot read is kept with the reason."""
    commits = run_commits(tables.finals)
    try:
        claims = claim_rows(results_verdicts(results_dir, tables).table, tables)
    except (ValueError, KeyError, ResultsDirError) as err:
        why = " ".join(str(err).split())
        return StudyClaims(tables.name, pd.DataFrame(), commits, report, f"verdicts could not be computed: {why}")
    return StudyClaims(tables.name, claims, commits, report)


def _commit_text(commits: list[str]) -> str:
    """Short commits (``4ff8cb7``, ``4ff8cb7+dirty``), or that the runs recorded none."""
    return ", ".join(c[:7] + c[40:] if len(c) >= 40 else c for c in commits) or "not recorded"


def board_page(studies: list[StudyClaims]) -> Board:
    """One row per claim of every study, in the order given; a study whose verdicts could not
    be computed is one row saying why."""
    columns = [*SUMMARY_COLUMNS, "metric_label"]
    frames, links = [], []
    for study in studies:
        claims = (pd.DataFrame([{"verdict": "not computed", "outcome": study.error}], columns=columns) if study.error
                  else study.claims.reindex(columns=columns))  # fmt: skip
        frames.append(claims.assign(study=study.study, commit=_commit_text(study.commits)))
        links += [study.report] * len(claims)
    rows = pd.concat(frames, ignore_index=True)
    header, effects = interval_column(rows, "weakest pair's effect")
    text = pd.DataFrame({
        "study": rows["study"], "claim": rows["claim"], "source": rows["source"], "verdict": rows["verdict"],
        "outcome": rows["outcome"], "metric": rows["metric_label"], "weakest pair": rows["weakest"],
        header: effects, "min effect": rows["min_effect"].map(number),
        "seeds": rows["seeds"].map(lambda n: "-" if pd.isna(n) else str(int(n))),
        "boundary": rows["boundary"], "commit": rows["commit"],
    }).astype(object).fillna("-")  # fmt: skip
    notes = [
        "Every claim of every study: its verdict and outcome (docs/verdicts.md), the weakest pair's effect "
        "in the claimed direction with its interval at the level that pair was judged at, the claim's min "
        "effect, the seeds per pair, the boundary of the looks, and the commit the runs were trained at "
        "(their `environment.json`). " + SEED_VARIANCE
    ]
    return Board(text, links, notes)


def board_markdown(board: Board) -> str:
    """The board as Markdown (``README.md``): each report linked by its relative path."""
    reports = [f"[report]({link})" if link else "-" for link in board.links]
    table = Table("board", board.frame.assign(report=reports)).to_markdown()
    return environment().get_template("board.md.j2").render(notes=board.notes, table=table)


def board_html(board: Board) -> str:
    """The board as one self-contained HTML page (``index.html``), styled as the report."""
    rows = [(list(row), link) for row, link in zip(board.frame.itertuples(index=False), board.links)]
    return environment().get_template("board.html.j2").render(notes=board.notes, columns=list(board.frame.columns),
                                                              rows=rows)  # fmt: skip
