"""The report's LaTeX tables: booktabs structure, escaping, and the numbers read back from
each ``.tex`` equal to the CSV it was made from, rounded as the report rounds them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glow_repro.analysis.latex import to_latex, write_latex
from glow_repro.analysis.report import build_report
from tests.test_tables import make_fake_study

_UNESCAPE = {r"\_": "_", r"\%": "%", r"\&": "&", r"\#": "#", "$<$": "<", "$>$": ">"}


def unescape(cell: str) -> str:
    for latex, text in _UNESCAPE.items():
        cell = cell.replace(latex, text)
    return cell.strip()


def parse_tabular(tex: str) -> pd.DataFrame:
    """The body of the one booktabs tabular in ``tex`` as text cells, after checking its
    environments are balanced and its rules are in order."""
    for environment in ("table", "tabular"):
        assert tex.count(rf"\begin{{{environment}}}") == tex.count(rf"\end{{{environment}}}") == 1, environment
    order = (r"\begin{tabular}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}")
    rules = [tex.index(rule) for rule in order]
    assert rules == sorted(rules)
    assert all(tex.count(rule) == 1 for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    text = re.sub(r"\\label\{[^}]*\}", "", tex)  # a label may hold underscores
    assert not re.search(r"(?<!\\)[%_#]", text), "an unescaped LaTeX special character"
    header, body = tex.split(r"\toprule")[1].split(r"\midrule")
    rows = [line.removesuffix(r"\\").strip() for line in body.split(r"\bottomrule")[0].strip().splitlines()]
    columns = [unescape(c) for c in header.strip().removesuffix(r"\\").split(" & ")]
    cells = [[unescape(c) for c in re.split(r"(?<!\\)&", row)] for row in rows]
    assert all(len(row) == len(columns) for row in cells)
    return pd.DataFrame(cells, columns=columns)


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def rounded(*values: float, digits: int = 3) -> list[float]:
    """The finite ``values`` as the report prints them."""
    return [float(f"{v:.{digits}f}") for v in values if np.isfinite(v)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latex")
    out = root / "report"
    build_report(make_fake_study(root, dataset="cifar10", steps_per_epoch=1), out)
    return out


def test_the_four_tables_are_written_and_linked_beside_their_csv(report: Path) -> None:
    assert sorted(p.name for p in (report / "tables").glob("*.tex")) == ["comparison.tex", "final_bpd.tex",
                                                                          "pairwise.tex", "verdicts.tex"]  # fmt: skip
    markdown = (report / "report.md").read_text()
    for csv, tex in (("summary", "final_bpd"), ("pairwise", "pairwise"), ("comparison", "comparison"),
                     ("verdict_claims", "verdicts")):  # fmt: skip
        assert f"Files: [`tables/{csv}.csv`](tables/{csv}.csv) · [`tables/{tex}.tex`](tables/{tex}.tex)" in markdown
    html_text = (report / "report.html").read_text()
    assert html_text.count('download="final_bpd.tex"') == 1 and 'href="data:' in html_text


def test_verdict_numbers_match_the_claims_csv(report: Path) -> None:
    table = parse_tabular((report / "tables" / "verdicts.tex").read_text())
    claims = pd.read_csv(report / "tables" / "verdict_claims.csv")
    assert list(table["claim"]) == list(claims["claim"]) and list(table["verdict"]) == list(claims["verdict"])
    (effect,) = [column for column in table.columns if column.startswith("effect [")]  # headed by its level
    for (_, shown), (_, row) in zip(table.iterrows(), claims.iterrows(), strict=True):
        assert numbers(shown[effect]) == rounded(row.effect, row.ci_low, row.ci_high)
        assert shown["outcome"] == row.outcome


def test_final_bpd_numbers_match_the_summary_csv(report: Path) -> None:
    tex = (report / "tables" / "final_bpd.tex").read_text()
    assert r"\label{tab:fake_ablation:final_bpd}" in tex and r"95\% Student-t" in tex
    table = parse_tabular(tex)
    summary = pd.read_csv(report / "tables" / "summary.csv")
    assert list(table["variant"]) == list(summary["variant"])
    for (_, shown), (_, row) in zip(table.iterrows(), summary.iterrows(), strict=True):
        assert numbers(shown["final test bpd [95% CI]"]) == rounded(row.final_mean, row.final_ci_low, row.final_ci_high)
        assert numbers(shown["best test bpd [95% CI]"]) == rounded(row.best_mean, row.best_ci_low, row.best_ci_high)
        assert numbers(shown["std"]) == rounded(row.final_std)
        assert shown["finished / runs"] == f"{row.n_done} / {row.n_runs}"


def test_pairwise_numbers_match_the_pairwise_csv(report: Path) -> None:
    table = parse_tabular((report / "tables" / "pairwise.tex").read_text())
    pairs = pd.read_csv(report / "tables" / "pairwise.csv")
    assert len(table) == len(pairs) == 6
    for (_, shown), (_, row) in zip(table.iterrows(), pairs.iterrows(), strict=True):
        assert (shown["a"], shown["b"]) == (row.a, row.b)
        assert numbers(shown["a - b (bpd)"] + shown["95% CI"]) == rounded(row["diff"], row.ci_low, row.ci_high)
        assert numbers(shown["t"]) == rounded(row.t, digits=2) and numbers(shown["df"]) == rounded(row.df, digits=1)
        for column, value in (("p", row.p_value), ("p (Holm)", row.p_holm)):
            assert shown[column] == "< 0.001" if value < 0.001 else numbers(shown[column]) == rounded(value)
        assert shown["significant"] == ("yes" if row.significant else "no")


def test_comparison_numbers_match_the_comparison_csv(report: Path) -> None:
    table = parse_tabular((report / "tables" / "comparison.tex").read_text())
    comparison = pd.read_csv(report / "tables" / "comparison.csv")
    comparable = comparison[comparison["comparable"]]
    assert len(table) == len(comparable) > 0
    for (_, shown), (_, row) in zip(table.iterrows(), comparable.iterrows(), strict=True):
        assert shown["variant"] == row.variant and shown["published"].startswith(row.reference)
        assert numbers(shown["ours"]) == rounded(row.ours) and numbers(shown["theirs"]) == rounded(row.theirs)
        assert numbers(shown["ours - theirs"]) == rounded(row.difference)
        assert shown["source"] == row.source


def test_special_characters_are_escaped_and_any_frame_is_one_call(tmp_path: Path) -> None:
    frame = pd.DataFrame({"variant": ["lr_1e-3 & 5%", "#2"], "p": ["< 0.001", None], "verdict": ["holds", "n/a"]})
    path = write_latex(frame, tmp_path / "verdicts.tex", r"Verdicts at 95\%.", "tab:verdicts")
    tex = path.read_text()
    assert tex == to_latex(frame, r"Verdicts at 95\%.", "tab:verdicts")
    assert r"lr\_1e-3 \& 5\%" in tex and r"\#2" in tex and "$<$ 0.001" in tex
    assert r"\begin{tabular}{lrl}" in tex  # numbers right-aligned, text left
    table = parse_tabular(tex)
    assert table.values.tolist() == [["lr_1e-3 & 5%", "< 0.001", "holds"], ["#2", "", "n/a"]]


def test_a_one_variant_report_writes_no_pairwise_table(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    for run in (results / "runs").iterdir():
        if not run.name.startswith("con-aff"):
            shutil.rmtree(run)
    out = tmp_path / "report"
    build_report(results, out)
    # the study's claims still get their (inconclusive) verdicts; there is no pair of variants
    assert sorted(p.name for p in (out / "tables").glob("*.tex")) == ["final_bpd.tex", "verdicts.tex"]
    assert len(parse_tabular((out / "tables" / "final_bpd.tex").read_text())) == 1
