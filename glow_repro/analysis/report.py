"""The paper-style study report: ``report.html``, ``report.md``, figures and tables, from a
results directory alone (no torch; docs/architecture.md).

``build_report(results/<study>, reports/<study>)`` writes::

    report.html          one self-contained file: CSS inline, images as data: URIs
    report.md            the same text; figures referenced under figures/
    figures/*.png|svg    every figure; figures/samples/*.png copied from run directories
    tables/*.csv         the long tables (also .parquet) and the numbers the report's tables show
    tables/*.tex         the tables a paper would show (final bpd, pairwise, published comparison, verdicts)

The numbers come from :mod:`glow_repro.analysis.study_analysis`, the figures and tables from
their records (:mod:`glow_repro.analysis.figures`, :mod:`glow_repro.analysis.report_tables`),
the sections from :mod:`glow_repro.analysis.sections`; this module draws and copies the
images, writes the files and renders the sections (:mod:`glow_repro.analysis.document`) to
both pages. The manipulation section (when the study asked for one) shows the figures and
numbers the study layer wrote under ``results/<study>/manipulations/``.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from tqdm.auto import tqdm

from glow_repro import __version__
from glow_repro.analysis import figures
from glow_repro.analysis.document import (
    Block,
    FigureFile,
    Files,
    Paragraphs,
    SampleRows,
    Table,
    inline_html,
    place_after,
)
from glow_repro.analysis.report_tables import build_tables
from glow_repro.analysis.sections import report_sections
from glow_repro.analysis.study_analysis import Analysis, analyse_results
from glow_repro.analysis.verdicts import number
from glow_repro.image_panels import shown_image, shown_images
from glow_repro.run.rundir import RunState, StudyDir, UnreadableFileError, read_json
from glow_repro.study.tables import Tables, write_tables

# --------------------------------------------------------------------------- figures


def _make_figures(a: Analysis, out: Path) -> list[FigureFile]:
    """Draw and save every figure record that applies to this study."""
    records = [record for record in figures.FIGURES if record.applies(a)]
    made = []
    for record in tqdm(records, desc="figures", unit="fig", disable=None, leave=False):
        png, _ = figures.save_figure(record.draw(a), out / "figures", record.name)
        made.append(FigureFile(record.name, record.caption_for(a), png, f"figures/{png.name}", record.after))
    return made


def _copy_samples(a: Analysis, results_dir: Path, out: Path) -> list[list[FigureFile]]:
    """Sample grids, reconstructions and interpolations of one finished run per variant,
    grouped per variant (temperature grid first) so the report shows a variant on one row."""
    order = {"temperatures": 0, "reconstructions": 1, "interpolation": 2}
    groups = []
    done = a.tables.finals[a.tables.finals["state"] == RunState.DONE]
    for _, run in done.drop_duplicates("variant").iterrows():
        temperatures = a.tables.configs.set_index("run_id").loc[run["run_id"], "train.sample_temperatures"]
        shown = shown_images(StudyDir(results_dir).run(run["run_id"]).samples)
        group = []
        for name in sorted(shown, key=lambda name: (order.get(name, len(order)), name)):
            png = shown[name]
            target = out / "figures" / "samples" / f"{run['run_id']}_{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            what = f"one row per temperature {temperatures}" if name == "temperatures" else name
            caption = f"`{run['variant']}`, seed {run['seed']}: {what}."
            group.append(FigureFile(target.stem, caption, target, f"figures/samples/{target.name}"))
        if group:
            groups.append(group)
    return groups


def manipulation_records(results_dir: Path, tables: Tables) -> list[dict]:
    """The readable ``manipulate_*.json`` records under ``results/<study>/manipulations/``
    whose figure is there too, in the study's order of attributes, then of variants."""
    records = []
    for path in sorted(StudyDir(results_dir).manipulations.glob("*/manipulate_*.json")):
        try:
            record = read_json(path, expect=dict)
        except UnreadableFileError:
            continue
        png = shown_image(path.with_suffix(".png"))
        if png.is_file() and {"attribute", "variant", "held_out"} <= set(record):
            records.append({**record, "png": png})
    asked = list(tables.study.get("manipulations") or [])
    variants = list(tables.finals["variant"].unique())

    def place(record: dict) -> tuple:
        attribute, variant = record["attribute"], record["variant"]
        return (asked.index(attribute) if attribute in asked else len(asked), attribute,
                variants.index(variant) if variant in variants else len(variants), variant)  # fmt: skip

    return sorted(records, key=place)


def manipulation_blocks(results_dir: Path, tables: Tables, out: Path) -> list[Block]:
    """The manipulation section's note, table (also ``tables/manipulations.csv``) and figures
    (one row per attribute, the variants side by side); empty when the study layer wrote none."""
    records = manipulation_records(results_dir, tables)
    if not records:
        return []
    name = "manipulations"  # the report's table, its CSV and its figures' folder
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[FigureFile]] = {}
    for r in records:
        held = r["held_out"]
        rows.append({
            "attribute": r["attribute"], "variant": r["variant"], "seed": r.get("seed", ""),
            "direction norm": number(r["direction_norm"]),
            "train images (+ / −)": f"{r['train_images']['positive']} / {r['train_images']['negative']}",
            "held-out images (+ / −)": f"{held['n_positive']} / {held['n_negative']}",
            "held-out mean projection (+ / −)": f"{number(held['mean_positive'])} / {number(held['mean_negative'])}",
            "separation (pooled SD)": number(held["gap_in_sd"]),
        })  # fmt: skip
        target = out / "figures" / name / f"{r['png'].parent.name}_{r['png'].name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r["png"], target)
        alphas = ", ".join(f"{alpha:g}" for alpha in r["alphas"])
        caption = (f"`{r['variant']}`, seed {r.get('seed', '?')}: `{r['attribute']}`; rows are test images, moved "
                   f"along the direction by alpha {alphas} (0: the reconstruction).")  # fmt: skip
        figure = FigureFile(target.stem, caption, target, f"figures/{name}/{target.name}")
        groups.setdefault(r["attribute"], []).append(figure)
    frame = pd.DataFrame(rows)
    csv = out / "tables" / f"{name}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    limit = records[0].get("image_limit")
    encoded = f"the first {limit} training images" if limit else "the training images"
    return [
        Paragraphs(
            [
                f"Semantic manipulation (Glow, section 5.3) on each variant's finished run of the lowest seed: "
                f"the direction is the mean latent (all levels) of an attribute's positives minus that of its "
                f"negatives among {encoded}, and its separation is the gap between the two groups' mean "
                "projections onto it on as many held-out test images, in pooled standard deviations "
                "(`glow-repro manipulate`)."
            ],
            "note",
        ),
        Table(name, frame, Files([(csv, f"tables/{csv.name}")])),
        SampleRows(list(groups.values())),
    ]


# --------------------------------------------------------------------------- build


def _reproduce_commands(tables: Tables, results_dir: Path) -> list[str]:
    """Run, follow and report the study: its spec under ``studies/`` when there is one, else
    the copy in the results directory."""
    shipped = (Path("studies") / f"{tables.name}.yaml", Path("studies") / "paper" / f"{tables.name}.yaml")
    spec = next((p for p in shipped if p.is_file()), StudyDir(results_dir).study_file)
    return [f"glow-repro run {spec}", f"glow-repro status {results_dir}", f"glow-repro report {results_dir}"]


def environment() -> Environment:
    """The templates of the pages glow-repro writes (``templates/``), with the ``inline`` filter."""
    env = Environment(
        loader=PackageLoader("glow_repro.analysis", "templates"),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["inline"] = inline_html
    return env


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of ``results_dir`` into ``out_dir`` (default ``reports/<study name>``);
    return the path of report.html."""
    results_dir = Path(results_dir)
    a = analyse_results(results_dir)
    tables = a.tables
    out = Path(out_dir) if out_dir is not None else Path("reports") / tables.name
    out.mkdir(parents=True, exist_ok=True)
    figure_files = _make_figures(a, out)
    samples = _copy_samples(a, results_dir, out)
    write_tables(tables, out / "tables")
    display = build_tables(a, out / "tables")
    study_file = StudyDir(results_dir).study_file
    study_yaml = study_file.read_text() if study_file.is_file() else ""
    manipulation = manipulation_blocks(results_dir, tables, out)
    commands = _reproduce_commands(tables, results_dir)
    sections = report_sections(a, display, samples, commands, study_yaml, manipulation)
    place_after(sections, [table for table in display.values() if table.after])
    place_after(sections, figure_files)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = {
        "title": f"Glow reproduction study: {tables.name}",
        "description": str(tables.study.get("description", "")),
        "meta": (
            f"Reproduces: {tables.study.get('reference', '') or 'n/a'} · results: `{results_dir}` · "
            f"generated {generated} by glow-repro {__version__}"
        ),
        "sections": sections,
    }
    env = environment()
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    html_path = out / "report.html"
    html_path.write_text(env.get_template("report.html.j2").render(**context))
    return html_path
