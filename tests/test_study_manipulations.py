"""A study's ``manipulations:`` (Glow, section 5.3): checked against the dataset's classes or
attributes at load, written after the runs finish for each variant's lowest finished seed,
and shown by the report in a Manipulation section only when those files exist."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

from glow_repro.analysis.document import Section
from glow_repro.analysis.report import build_report, manipulation_blocks
from glow_repro.core.config import ConfigError
from glow_repro.core.data import load_split
from glow_repro.image_panels import FIGURE_SUFFIX, figure_name
from glow_repro.run.manipulation import write_manipulation
from glow_repro.run.rundir import StudyDir
from glow_repro.run.sampling import file_safe, load_trained_model
from glow_repro.study.manipulations import ENCODED_IMAGES, ROWS, chosen_runs
from glow_repro.study.runner import StudyOptions, run_study
from glow_repro.study.spec import expand, load_study, spec_yaml, with_overrides
from glow_repro.study.tables import load_tables
from tests.test_runner import fake_train
from tests.test_spec import STUDIES, study, write
from tests.test_tables import make_fake_study

TINY = {
    "data": {"dataset": "synthetic", "synthetic_size": 32},
    "model": {"depth": 1, "levels": 2, "width": 8},
    "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "n_samples": 2, "init_images": 16, "progress": False},
}
GRID = {"model.conditioning": ["none", "class"]}
FASHION = {"data": {"dataset": "fashion-mnist"}, "model": {"depth": 2, "levels": 2, "width": 16}}


def test_requested_attributes_load_and_change_no_run_id(tmp_path):
    plain = load_study(write(tmp_path, study(base=FASHION, grid=GRID), "plain.yaml"))
    asked = load_study(write(tmp_path, study(base=FASHION, grid=GRID, manipulations=["Sneaker-vs-Sandal", "7"])))
    assert asked.manipulations == ["Sneaker-vs-Sandal", "7"]
    assert [r.run_id for r in expand(asked)] == [r.run_id for r in expand(plain)]
    assert "manipulations" not in yaml.safe_load(spec_yaml(plain))  # study.yaml as before the key
    copy = write(tmp_path, spec_yaml(asked), "copy.yaml")
    assert load_study(copy).manipulations == asked.manipulations


def test_the_shipped_conditional_study_asks_for_sneaker_vs_sandal():
    assert load_study(STUDIES / "conditional.yaml").manipulations == ["Sneaker-vs-Sandal"]


@pytest.mark.parametrize(
    "base, attributes, expected",
    [
        (FASHION, ["Sneaker-vs-Sandal", "Boot-vs-Sandal"], "manipulations.1: unknown attribute 'Boot-vs-Sandal' "
         "of fashion-mnist: name a class, a class against the rest, or two classes as A-vs-B; its classes are "
         "0 T-shirt/top, 1 Trouser,"),
        (TINY, ["zigzag"], "manipulations.0: unknown attribute 'zigzag' of synthetic"),
        (TINY, ["stripes", "stripes"], "manipulations.1: stripes is listed twice"),
    ],
)  # fmt: skip
def test_an_unknown_attribute_is_one_line_naming_file_key_and_the_allowed_ones(tmp_path, base, attributes, expected):
    path = write(tmp_path, study(base=base, grid=GRID, manipulations=attributes), "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: {expected}") and "\n" not in str(err.value)


def test_the_lowest_finished_seed_of_each_variant_is_chosen(tmp_path):
    spec_path = write(tmp_path, study(base=TINY, grid=GRID, seeds=[2, 1, 0]))
    results = tmp_path / "results"
    run_study(spec_path, results, StudyOptions(launcher="inprocess", train_fn=fake_train, only=["seed=2", "seed=1"]))
    chosen = chosen_runs(load_study(spec_path), results)
    assert [(run.variant, run.seed) for run in chosen] == [("conditioning=none", 1), ("conditioning=class", 1)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A two-variant tiny study, trained for real, that asks for one manipulation."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    path = write(root, study(name="manip", base=TINY, grid=GRID, seeds=[0], manipulations=["stripes-vs-blob"]))
    run_study(path, root / "results", StudyOptions(launcher="inprocess"))
    return root / "results"


def test_the_study_writes_each_variants_figure_and_numbers(results, tmp_path):
    for run in expand(load_study(results / "study.yaml")):
        folder = StudyDir(results).manipulation(file_safe(run.variant))
        record = json.loads((folder / "manipulate_stripes-vs-blob.json").read_text())
        assert (folder / "manipulate_stripes-vs-blob.png").is_file()
        assert (folder / f"manipulate_stripes-vs-blob{FIGURE_SUFFIX}").is_file()
        assert (record["run_id"], record["seed"], record["variant"]) == (run.run_id, 0, run.variant)
        assert record["image_limit"] == ENCODED_IMAGES and record["rows"] == ROWS
        config, model = load_trained_model(results / "runs" / run.run_id)
        again = write_manipulation(
            model, config, tmp_path, load_split(config.data, "train"), load_split(config.data, "test"),
            "stripes-vs-blob", encode=ENCODED_IMAGES,
        )  # fmt: skip
        assert record["direction_norm"] == pytest.approx(again["direction_norm"], rel=1e-6)
        assert record["held_out"] == pytest.approx(again["held_out"], rel=1e-6)


@pytest.fixture
def fake_with_manipulations(results, tmp_path):
    """A fake finished study with the tiny study's manipulation record copied to two variants."""
    fake = make_fake_study(tmp_path / "fake")
    tables = load_tables(fake)
    assert manipulation_blocks(fake, tables, tmp_path / "unused") == []  # no files, no section
    variants = list(tables.finals["variant"].unique())[:2]
    source = next(StudyDir(results).manipulations.glob("*/manipulate_stripes-vs-blob.json"))
    for variant in variants:
        folder = StudyDir(fake).manipulation(file_safe(variant))
        folder.mkdir(parents=True)
        shutil.copy(source.with_suffix(".png"), folder)
        shutil.copy(source.with_name(figure_name(source.with_suffix(".png").name)), folder)
        record = {**json.loads(source.read_text()), "variant": variant}
        (folder / source.name).write_text(json.dumps(record))
    return fake, tables, variants


def test_the_manipulation_section_shows_the_numbers_and_figures(fake_with_manipulations, tmp_path):
    fake, tables, variants = fake_with_manipulations
    out = tmp_path / "report"
    blocks = manipulation_blocks(fake, tables, out)
    markdown = Section("manipulation", "Manipulation", blocks).to_markdown(4)
    assert markdown.startswith("## 4. Manipulation") and "first 1000 training images" in markdown
    assert all(f"`{variant}`, seed 0: `stripes-vs-blob`" in markdown for variant in variants)
    shown = pd.read_csv(out / "tables" / "manipulations.csv")
    assert list(shown["variant"]) == variants and set(shown["attribute"]) == {"stripes-vs-blob"}
    record = json.loads(next(StudyDir(fake).manipulations.glob("*/*.json")).read_text())
    assert shown["separation (pooled SD)"][0] == pytest.approx(record["held_out"]["gap_in_sd"], abs=1e-3)
    assert len(list((out / "figures" / "manipulations").glob("*.png"))) == 2
    assert all(png.name.endswith(FIGURE_SUFFIX) for png in (out / "figures" / "manipulations").glob("*.png"))


@pytest.mark.slow
def test_the_report_has_the_manipulation_section(fake_with_manipulations, tmp_path):
    fake, _, _ = fake_with_manipulations
    build_report(fake, tmp_path / "report")
    assert "Manipulation</h2>" in (tmp_path / "report" / "report.html").read_text()
    assert "Manipulation\n" in (tmp_path / "report" / "report.md").read_text()


def test_a_set_that_changes_the_dataset_is_checked_against_the_attributes(tmp_path):
    path = write(tmp_path, study(base=FASHION, grid=GRID, manipulations=["Sneaker-vs-Sandal"]))
    with pytest.raises(ConfigError, match=r"manipulations.0: unknown attribute 'Sneaker-vs-Sandal' of mnist"):
        with_overrides(load_study(path), ["data.dataset=mnist"])
