"""Report tables as LaTeX for a paper: a ``table`` float around a booktabs ``tabular``
(``\\toprule``, ``\\midrule``, ``\\bottomrule``; the preamble needs ``\\usepackage{booktabs}``),
written by pandas' own :meth:`pandas.io.formats.style.Styler.to_latex`.

Cells are the report's display text (numbers already rounded as the report shows them), so
a table in the paper reads exactly as in the report; LaTeX's special characters in cells and
headers (``_``, ``%``, ``&``, ``#``, ...) are escaped, and ``<`` / ``>`` become math so they
print as themselves in any font encoding.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

_NUMBER_LIKE = re.compile(r"^(|n/a|[<>]?\s*[-+]?[\d.,]+(\s*\[.*\])?)$")


def _math_comparisons(text: str) -> str:
    return text.replace("<", "$<$").replace(">", "$>$")


def _column_format(frame: pd.DataFrame) -> str:
    """``r`` for columns whose every cell is a number (or ``n/a``, or empty), ``l`` for the others."""
    cells = frame.astype(str)
    return "".join("r" if len(cells) and cells[c].str.strip().str.fullmatch(_NUMBER_LIKE).all() else "l" for c in cells)


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """``frame`` (display text, no index) as a captioned, labelled booktabs table.
    ``caption`` and ``label`` are LaTeX as given (write ``95\\%``, not ``95%``)."""
    text = frame.astype(object).where(frame.notna(), "").astype(str)
    styler = (
        text.style.hide(axis="index")
        .format(_math_comparisons, escape="latex")
        .format_index(_math_comparisons, escape="latex", axis=1)
    )
    return styler.to_latex(
        column_format=_column_format(text), hrules=True, caption=caption, label=label,
        position_float="centering",
    )  # fmt: skip


def write_latex(frame: pd.DataFrame, path: str | Path, caption: str, label: str) -> Path:
    """Write :func:`to_latex` of ``frame`` to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_latex(frame, caption, label))
    return path
