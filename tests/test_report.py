"""The report and the `report` / `compare` commands."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from glow_repro.analysis.document import inline_html
from glow_repro.analysis.report import build_report
from glow_repro.cli import main
from glow_repro.image_panels import FIGURE_SUFFIX
from glow_repro.run.rundir import RunLock
from tests.test_tables import make_fake_study

SECTIONS = ("verdicts", "summary", "setup", "results", "stability", "published", "fidelity", "reproduce")


class _Links(HTMLParser):
    """Every src/href and every id of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
            if name == "id" and value:
                self.ids.add(value)


def check_report(out: Path) -> str:
    """Assert what every report must satisfy; return the HTML text."""
    text = (out / "report.html").read_text()
    links = _Links()
    links.feed(text)
    assert links.refs, "the report embeds no images or links"
    for ref in links.refs:
        assert ref.startswith("data:") or ref.startswith("#"), f"external reference {ref[:60]}"
        if ref.startswith("#"):
            assert ref[1:] in links.ids, f"anchor {ref} has no target"
    assert set(SECTIONS) <= links.ids
    assert "**" not in text, "Markdown emphasis left unconverted in the HTML"
    pngs = sorted((out / "figures").rglob("*.png"))
    assert pngs
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
    for svg in (out / "figures").glob("*.svg"):
        assert ET.parse(svg).getroot().tag.endswith("svg")
    assert {p.stem for p in pngs if p.parent.name == "figures"} == {s.stem for s in (out / "figures").glob("*.svg")}
    markdown = (out / "report.md").read_text()
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (out / line[line.index("(") + 1 : -1]).is_file(), line
    for table in ("finals", "evals", "summary", "pairwise", "ranking", "divergence", "comparison", "fidelity"):
        assert (out / "tables" / f"{table}.csv").is_file(), table
    return text


def test_report_from_a_fake_study(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert build_report(make_fake_study(tmp_path), out) == out / "report.html"
    text = check_report(out)
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == {"test_bpd_curves", "final_bpd", "divergence", "train_bpd_curves"}
    assert len(list((out / "figures" / "samples").glob("*.png"))) == 4  # one run per variant
    markdown = (out / "report.md").read_text()
    # the summary is written from the numbers
    assert "Lowest final test bpd: `permutation=conv1x1, coupling=affine` with 2.737" in markdown
    assert "1 of 11 runs that ended diverged" in markdown
    assert "The claimed order (affine < additive) holds in these means" in markdown
    # verdicts open the report, from the claims in study.yaml
    assert markdown.index("Verdicts on the paper's claims") < markdown.index("## 2. Summary")
    assert (
        "Claim `permutation-order` (Glow, Figure 3), conv1x1 < reverse in the test bpd of the last evaluation "
        "(step 400): **reproduced**, 2 of 2 pairs reproduced"
    ) in markdown
    assert "conv1x1 &lt; reverse in the test bpd of the last evaluation (step 400): <strong>reproduced</strong>" in text
    # the metrics table names each metric in words, once: best equals final in every run here
    assert (
        "Left out as equal in every run to a metric shown: the lowest test bpd of any evaluation (steps 0, " in markdown
    )
    metrics = markdown[markdown.index("The same claims under the other metrics") : markdown.index("## 2. Summary")]
    assert "| test bpd of the last evaluation (step 400) " in metrics and "| lowest test bpd" not in metrics
    # the unpaired Welch table is labelled as description, not as the verdict test
    assert "Descriptive, not the verdict test: differences of mean final test bpd" in markdown
    assert "A seed fixes the initialisation, the data order and the dequantisation noise" in markdown
    # reverse/affine has one finished seed: no spread, so the claim cannot be resolved there
    assert (
        "Claim `affine-beats-additive` (Glow, Figure 3), affine < additive in the test bpd of the last evaluation "
        "(step 400): **inconclusive**" in markdown
    )
    assert "the least resolved pair, affine < additive (permutation=reverse)" in markdown
    claims = pd.read_csv(out / "tables" / "verdict_claims.csv").set_index("claim")
    assert (
        claims.loc["permutation-order", "verdict"] == "reproduced" and claims.loc["permutation-order", "resolved"] == 2
    )
    assert "\\begin{tabular}" in (out / "tables" / "verdicts.tex").read_text()
    assert "no verified published bpd for Fashion-MNIST" in markdown
    assert "RuntimeError: boom" in text
    assert "glow-repro run" in text and "con-aff-s2" in text


@pytest.mark.slow
def test_cifar10_figure3_study_overlays_the_digitised_paper_curves(tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(make_fake_study(tmp_path, dataset="cifar10", steps_per_epoch=1), out)
    check_report(out)
    assert "Dashed: the paper's curves, digitised" in (out / "report.md").read_text()


@pytest.mark.slow
def test_cli_report_defaults_to_reports_study_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = make_fake_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report", str(results)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "fake_ablation" / "report.html").is_file()


@pytest.mark.parametrize("command", ["report", "compare"])
def test_cli_on_a_non_results_directory_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    result = CliRunner().invoke(main, [command, str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "not a results directory" in result.output


def test_cli_compare_marks_padded_tiled_mnist_incomparable(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path, dataset="mnist", image_size=32, channels=3)
    plain = CliRunner().invoke(main, ["compare", str(results)])
    assert plain.exit_code == 0, plain.output
    assert "No published number is comparable" in plain.output
    assert "image size 32 vs 28; channels 3 vs 1" in plain.output
    full = CliRunner().invoke(main, ["compare", str(results), "--all"])
    assert "FFJORD" in full.output and "False" in full.output


@pytest.mark.slow
def test_report_of_a_real_smoke_study(tmp_path: Path) -> None:
    pytest.importorskip("glow_repro.run.train")
    runner = pytest.importorskip("glow_repro.study.runner")
    import torch

    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[1]
    results = tmp_path / "results" / "smoke"
    runner.run_study(repo / "studies" / "smoke.yaml", results, runner.StudyOptions(workers=1, launcher="inprocess"))
    out = tmp_path / "report"
    build_report(results, out)
    text = check_report(out)
    assert (out / "figures" / "test_bpd_curves.png").is_file()
    # the samples are shown as the runs' labelled figures (docs/images.md), pixelated
    samples = sorted((out / "figures" / "samples").glob("*.png"))
    assert samples and all(png.name.endswith(FIGURE_SUFFIX) for png in samples)
    assert all(base64.b64encode(png.read_bytes()).decode() in text for png in samples)
    assert "figure.sample img { image-rendering: pixelated; }" in text


def _rewrite(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.slow
def test_report_when_every_run_of_a_variant_diverges(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    for run in (results / "runs").glob("con-aff-*"):
        _rewrite(run / "status.json", state="diverged")
        _rewrite(run / "summary.json", state="diverged", diverged=True, final_test_bpd=None)
    out = tmp_path / "report"
    build_report(results, out)
    check_report(out)
    markdown = (out / "report.md").read_text()
    assert "highest rate is `permutation=conv1x1, coupling=affine` with 3/3" in markdown
    assert "Lowest final test bpd: `permutation=conv1x1, coupling=additive`" in markdown


@pytest.mark.slow
def test_depth_study_gets_the_depth_figure(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    for run in (results / "runs").iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["depth"] = 2 if config["model"]["permutation"] == "reverse" else 4
        config["model"]["permutation"] = "conv1x1"
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    build_report(results, out)
    check_report(out)
    assert (out / "figures" / "depth.png").is_file()
    assert "`depth`" in (out / "report.md").read_text()


@pytest.mark.slow
def test_labelled_variants_have_one_name_in_status_tables_and_report(tmp_path: Path) -> None:
    from glow_repro.study.runner import StudyOptions, run_study
    from glow_repro.study.tables import load_tables
    from tests.test_runner import fake_train

    spec = {
        "name": "labelled", "seeds": [0, 1],
        "base": {"data": {"dataset": "synthetic"}, "model": {"depth": 1, "levels": 1}, "train": {"steps": 3}},
        "variants": [{"label": "wide", "model.width": 16}, {"label": "narrow", "model.width": 8}],
        "grid": {"model.coupling": ["additive", "affine"]},
    }  # fmt: skip
    (tmp_path / "labelled.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    results = tmp_path / "results"
    run_study(tmp_path / "labelled.yaml", results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    names = {f"{size}, coupling={coupling}" for size in ("wide", "narrow") for coupling in ("additive", "affine")}

    status = CliRunner().invoke(main, ["status", str(results)]).output.splitlines()
    shown = {" ".join(line.split()[1:-5]) for line in status[1:9]}  # between run id and seed
    tables = load_tables(results)
    assert shown == set(tables.finals["variant"]) == names
    assert "model.width" in tables.swept  # a column still, though the label names it
    build_report(results, tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    html_text = (tmp_path / "report" / "report.html").read_text()
    for name in names:
        assert f"| {name}" in markdown and f"<td>{name}</td>" in html_text
    assert "width=16" not in markdown and "width=8" not in html_text


def test_a_registered_figure_record_appears_in_both_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from glow_repro.analysis import figures

    monkeypatch.setattr(figures, "FIGURES", list(figures.FIGURES))

    def draw(a) -> Figure:
        fig = Figure(figsize=(3, 2))
        fig.subplots().plot(a.summary["final_mean"].to_numpy(), "o")
        return fig

    figures.register(figures.FigureRecord("toy_means", after="fidelity", applies=lambda a: True, draw=draw,
                                          caption=lambda a: f"Toy: the means of {len(a.summary)} variants."))  # fmt: skip
    out = tmp_path / "report"
    build_report(make_fake_study(tmp_path), out)
    text = check_report(out)
    assert '<figure id="fig-toy_means"><img src="data:image/png;base64,' in text
    assert "Toy: the means of 4 variants." in text
    markdown = (out / "report.md").read_text()
    assert "![toy_means](figures/toy_means.png)\n\n*Toy: the means of 4 variants.*" in markdown
    assert markdown.index("## 7. Fidelity") < markdown.index("![toy_means]") < markdown.index("## 8. ")
    with pytest.raises(ValueError, match="registered already"):
        figures.register(figures.FigureRecord("toy_means", "results", lambda a: True, draw, ""))


def test_a_registered_table_record_appears_in_both_reports_with_its_csv_and_latex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glow_repro.analysis import report_tables
    from glow_repro.analysis.report_tables import Latex, TableRecord

    monkeypatch.setattr(report_tables, "TABLES", list(report_tables.TABLES))

    def build(a) -> pd.DataFrame:
        return pd.DataFrame({"variant": a.summary["variant"], "runs": a.summary["n_runs"].astype(str)})

    toy = TableRecord(
        "toy_runs",
        build,
        csv="toy_runs",
        numbers=lambda a: a.summary[["variant", "n_runs"]],
        latex=Latex("toy_runs", "Toy: runs per variant."),
        after="fidelity",
    )
    report_tables.register(toy)
    out = tmp_path / "report"
    build_report(make_fake_study(tmp_path), out)
    check_report(out)
    csv = pd.read_csv(out / "tables" / "toy_runs.csv")
    assert list(csv.columns) == ["variant", "n_runs"] and len(csv) == 4
    assert "Toy: runs per variant." in (out / "tables" / "toy_runs.tex").read_text()
    markdown = (out / "report.md").read_text()
    fidelity = markdown[markdown.index("## 7. Fidelity") : markdown.index("## 8. ")]
    assert "| variant " in fidelity
    assert (
        "Files: [`tables/toy_runs.csv`](tables/toy_runs.csv) · [`tables/toy_runs.tex`](tables/toy_runs.tex)" in fidelity
    )
    assert 'download="toy_runs.tex"' in (out / "report.html").read_text()
    with pytest.raises(ValueError, match=r"'toy_again': tables/toy_runs.csv registered already by 'toy_runs'"):
        report_tables.register(TableRecord("toy_again", build, csv="toy_runs"))
    with pytest.raises(ValueError, match="give it a build function"):
        report_tables.register(TableRecord("toy_numbers", csv="toy_numbers"))


def test_a_table_placed_after_no_section_or_table_is_a_clear_error(tmp_path: Path) -> None:
    from glow_repro.analysis.document import Section, Table, place_after

    lost = Table("lost", pd.DataFrame(), after="nowhere")
    with pytest.raises(ValueError, match=r"table 'lost': after='nowhere' is neither a section nor a table.*results"):
        place_after([Section("results", "Results")], [lost])


def test_prose_marks_become_html_and_marks_inside_code_stay():
    assert inline_html("Claim `a<b`: **reproduced**, *absent* x") == (
        "Claim <code>a&lt;b</code>: <strong>reproduced</strong>, <em>absent</em> x"
    )
    assert inline_html("`**kept**` and 2 * 3 * 4") == "<code>**kept**</code> and 2 * 3 * 4"


def test_a_figure_placed_after_no_section_or_table_is_a_clear_error(tmp_path: Path) -> None:
    from glow_repro.analysis.document import FigureFile, Section, place_after

    lost = FigureFile("lost", "", tmp_path / "lost.png", "figures/lost.png", after="nowhere")
    with pytest.raises(ValueError, match=r"'lost': after='nowhere' is neither a section nor a table.*results"):
        place_after([Section("results", "Results")], [lost])


def _study_of(tmp_path: Path, widths: tuple[int, ...], seeds: tuple[int, ...]) -> Path:
    """A results directory trained by the test stand-in for ``train()``."""
    from glow_repro.study.runner import StudyOptions, run_study
    from tests.test_runner import fake_train, make_study

    results = tmp_path / "results"
    run_study(
        make_study(tmp_path, widths=widths, seeds=seeds),
        results,
        StudyOptions(launcher="inprocess", train_fn=fake_train),
    )
    return results


@pytest.mark.parametrize("widths, seeds, expected", [
    ((12,), (0, 1, 2), ["Final test bpd: 7.100 [6.852, 7.348] (mean [95% CI] over 3 finished runs). "
                        "No comparison: the study has one variant."]),
    ((12,), (0,), ["Final test bpd: 7.000 (1 finished run, no interval). No comparison: the study has one variant."]),
    ((12, 13), (0, 1), ["Final test bpd of `width=12`: 7.050", "No comparison: only `width=12` has a finished run.",
                        "Left out of these statistics: 2 runs failed with an error (`width13-s0-"]),
    ((12, 16), (0,), ["a difference of 0.000 bpd, not tested (a t-test needs two finished runs of each variant)",
                      "no pair could be tested (a t-test needs two finished runs of each variant)"]),
])  # fmt: skip
@pytest.mark.slow
def test_report_of_any_number_of_variants_and_seeds(tmp_path: Path, widths, seeds, expected: list[str]) -> None:
    results = _study_of(tmp_path, widths, seeds)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(results), "--out", str(out)])
    assert result.exit_code == 0, result.output
    check_report(out)
    markdown = (out / "report.md").read_text()
    for text in expected:
        assert text in markdown
    if len(widths) == 1 or 13 in widths:  # no comparison: no ranking or pairwise table is shown
        assert "| rank" not in markdown and "All pairwise comparisons" not in markdown
        assert markdown.count("No comparison: ") == 2  # summary and results


@pytest.mark.slow
def test_report_names_the_runs_it_leaves_out_and_why(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    (results / "runs" / "con-aff-s0" / "status.json").write_text('{"state": "do')  # torn by hand
    (results / "runs" / "con-aff-s1" / "status.json").unlink()
    _rewrite(results / "runs" / "con-aff-s2" / "status.json", state="running")
    trainer = RunLock(results / "runs" / "con-aff-s2")  # it runs: its trainer holds the lock
    assert trainer.acquire()
    out = tmp_path / "report"
    build_report(results, out)
    trainer.release()
    text = check_report(out)
    sentence = ("Left out of these statistics: 1 run diverged (`rev-aff-s1`); 1 run still running (`con-aff-s2`); "
                "1 run failed with an error (`rev-add-s2`); 1 run not started (`con-aff-s1`); "
                "1 run whose status.json could not be read (`con-aff-s0`).")  # fmt: skip
    markdown = (out / "report.md").read_text()
    assert markdown.count(sentence) == 1 and "<code>con-aff-s0</code>" in text
    assert "Outcome: 7 done, 1 diverged, 1 running, 1 failed, 1 pending, 1 unreadable." in markdown
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("variant")
    assert summary.loc["permutation=conv1x1, coupling=affine", ["n_runs", "n_done"]].tolist() == [3, 0]


@pytest.mark.slow
def test_a_report_with_every_run_finished_says_none_is_left_out(tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(_study_of(tmp_path, (12, 16), (0, 1)), out)
    assert "No run is left out: every run finished." in (out / "report.md").read_text()


def test_report_before_any_run_finished(tmp_path: Path) -> None:
    results = _study_of(tmp_path, (12, 16), (0, 1))
    locks = []
    for run in (results / "runs").iterdir():
        (run / "summary.json").unlink()
        if run.name.startswith("width12"):  # never started: only its config is there
            for log in ("status.json", "metrics.jsonl", "evals.jsonl"):
                (run / log).unlink()
        else:
            _rewrite(run / "status.json", state="running")
            locks.append(RunLock(run))  # its trainer holds it (else the run reads as killed)
            assert locks[-1].acquire()
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(results), "--out", str(out)])
    for lock in locks:
        lock.release()
    assert result.exit_code == 0, result.output
    check_report(out)
    markdown = (out / "report.md").read_text()
    for text in ("Outcome: 2 running, 2 pending.", "No run finished, so there is no final test bpd to compare.",
                 "No run has ended (done or diverged) yet.", "No comparison: no variant has a finished run.",
                 "Left out of these statistics: 2 runs still running (`width16-s0-", "2 runs not started (`width12-s0-",
                 "### Time to reach a threshold"):  # fmt: skip
        assert text in markdown
    assert (out / "figures" / "train_bpd_curves.png").is_file()  # the running runs' logged steps
    assert sorted(p.name for p in (out / "tables").glob("*.tex")) == ["final_bpd.tex"]
