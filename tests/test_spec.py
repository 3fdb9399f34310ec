"""Study specs: grid expansion, stable run ids, strict validation, shipped studies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from glow_repro.core.config import ConfigError
from glow_repro.study.launchers.slurm import parse_time_minutes
from glow_repro.study.spec import (
    expand,
    load_study,
    spec_yaml,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"

BASE = {
    "data": {"dataset": "synthetic"},
    "model": {"depth": 2, "levels": 2, "width": 16},
    "train": {"steps": 5, "batch_size": 8},
}


def write(tmp_path: Path, spec: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def study(**fields) -> dict:
    return {"name": "t", "base": BASE, "seeds": [0, 1], **fields}


def test_grid_expands_to_product_times_seeds_with_labels_and_ids(tmp_path):
    path = write(
        tmp_path, study(grid={"model.permutation": ["reverse", "conv1x1"], "model.coupling": ["additive", "affine"]})
    )
    runs = expand(load_study(path))
    assert len(runs) == 2 * 2 * 2
    assert [(r.variant, r.seed) for r in runs[:3]] == [
        ("permutation=reverse, coupling=additive", 0),
        ("permutation=reverse, coupling=additive", 1),
        ("permutation=reverse, coupling=affine", 0),
    ]
    first = runs[0]
    assert first.overrides == {"model.permutation": "reverse", "model.coupling": "additive"}
    assert first.config.model.permutation == "reverse" and first.config.model.width == 16
    assert [r.config.seed for r in runs[:2]] == [0, 1]
    assert re.fullmatch(r"additive-reverse-s0-[0-9a-f]{8}", first.run_id)
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in expand(load_study(path))] == [r.run_id for r in runs]  # stable


def test_reordering_yaml_keys_keeps_run_ids(tmp_path):
    one = write(
        tmp_path,
        study(grid={"model.permutation": ["reverse", "conv1x1"], "model.coupling": ["additive", "affine"]}),
        "one.yaml",
    )
    base = {
        "train": {"batch_size": 8, "steps": 5},
        "model": {"width": 16, "levels": 2, "depth": 2},
        "data": {"dataset": "synthetic"},
    }
    other = {
        "seeds": [1, 0],
        "grid": {"model.coupling": ["affine", "additive"], "model.permutation": ["conv1x1", "reverse"]},
        "base": base,
        "name": "t",
    }
    two = write(tmp_path, other, "two.yaml")

    def ids(path):
        return {r.run_id for r in expand(load_study(path))}

    assert ids(one) == ids(two)


def test_execution_settings_do_not_change_ids_but_real_settings_do(tmp_path):
    plain = expand(load_study(write(tmp_path, study(), "a.yaml")))[0].run_id
    execution = {**BASE, "train": {**BASE["train"], "threads": 3, "progress": False}}
    same = expand(load_study(write(tmp_path, study(base=execution), "b.yaml")))[0].run_id
    lr = {**BASE, "train": {**BASE["train"], "lr": 5e-4}}
    different = expand(load_study(write(tmp_path, study(base=lr), "c.yaml")))[0].run_id
    assert plain == same != different
    assert re.fullmatch(r"s0-[0-9a-f]{8}", plain)  # no swept settings: seed and hash only


def test_explicit_variants_combine_with_grid(tmp_path):
    variants = [
        {"label": "paper", "model.scale": "exp", "train.lr": 1e-3},
        {"model.scale": "sigmoid", "train.lr": "3e-3"},
    ]
    path = write(tmp_path, study(variants=variants, grid={"model.depth": [2, 4]}, seeds=[0]))
    runs = expand(load_study(path))
    assert [r.variant for r in runs] == [
        "paper, depth=2",
        "paper, depth=4",
        "scale=sigmoid, lr=0.003, depth=2",
        "scale=sigmoid, lr=0.003, depth=4",
    ]
    assert runs[0].overrides == {"model.scale": "exp", "train.lr": 0.001, "model.depth": 2}
    assert runs[2].overrides == {"model.scale": "sigmoid", "train.lr": 0.003, "model.depth": 2}
    assert runs[0].run_id.startswith("paper-depth2-s0-")
    assert runs[2].run_id.startswith("depth2-sigmoid-lr0.003-s0-")


def test_base_path_is_relative_to_the_study_file(tmp_path):
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs", BASE, "base.yaml")
    (tmp_path / "studies").mkdir()
    path = write(tmp_path / "studies", study(base="../configs/base.yaml", seeds=[0]))
    inline = write(tmp_path, study(seeds=[0]), "inline.yaml")
    assert expand(load_study(path))[0].run_id == expand(load_study(inline))[0].run_id


def test_set_changes_the_base_as_if_the_base_said_so(tmp_path):
    """A study as a delta: ``base:`` file + ``set:`` gives the runs (and ids) of the inline whole."""
    write(tmp_path, BASE, "base.yaml")
    delta = write(
        tmp_path,
        study(base="base.yaml", set={"train.steps": 7, "model.width": 8}, grid={"model.depth": [2, 3]}),
        "delta.yaml",
    )
    whole = {**BASE, "model": {**BASE["model"], "width": 8}, "train": {**BASE["train"], "steps": 7}}
    inline = write(tmp_path, study(base=whole, grid={"model.depth": [2, 3]}), "inline.yaml")
    runs = expand(load_study(delta))
    assert [r.run_id for r in runs] == [r.run_id for r in expand(load_study(inline))]
    assert runs[0].config.train.steps == 7 and runs[0].config.model.width == 8
    copy = tmp_path / "copy" / "study.yaml"
    copy.parent.mkdir()
    copy.write_text(spec_yaml(load_study(delta)))
    assert not re.search(r"^set:", copy.read_text(), re.MULTILINE)
    assert [r.run_id for r in expand(load_study(copy))] == [r.run_id for r in runs]


def test_resolved_copy_expands_to_the_same_runs(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = write(tmp_path, "# header line\n" + yaml.safe_dump(study(base="base.yaml", grid={"model.depth": [2, 3]})))
    spec = with_overrides(load_study(path), ["train.steps=7"])
    copy = tmp_path / "copy" / "study.yaml"
    copy.parent.mkdir()
    copy.write_text(spec_yaml(spec))
    assert copy.read_text().startswith("# header line\n# Resolved copy of")
    assert [r.run_id for r in expand(load_study(copy))] == [r.run_id for r in expand(spec)]
    assert expand(spec)[0].config.train.steps == 7


def test_set_may_not_touch_a_swept_key(tmp_path):
    spec = load_study(write(tmp_path, study(grid={"model.depth": [2, 3]})))
    with pytest.raises(ConfigError, match=r"--set model.depth=4: model.depth is swept .*--only"):
        with_overrides(spec, ["model.depth=4"])


BAD = {
    "unknown top-level key": (study(gird={"model.depth": [2]}), r"gird: unknown key"),
    "unknown axis key": (study(grid={"model.depht": [2, 3]}), r"\(model.depht=2\): model.depht: unknown key"),
    "bad axis value": (
        study(grid={"model.permutation": ["conv1x1", "lu"]}),
        r"model.permutation='lu'\): model.permutation: must be one of",
    ),
    "empty axis": (study(grid={"model.depth": []}), r"grid: .*axis model.depth is empty"),
    "axis not a list": (study(grid={"model.depth": 4}), r"grid.model.depth: .*list"),
    "no seeds": (study(seeds=[]), r"seeds: .*at least 1"),
    "duplicate seeds": (study(seeds=[0, 0]), r"seeds: .*distinct"),
    "negative seed": (study(seeds=[-1]), r"seeds: .*non-negative"),
    "text seed": (study(seeds=["a"]), r"seeds.0: .*integer"),
    "seed as axis": (study(grid={"seed": [0, 1]}), r"grid: .*seeds:"),
    "bad name": (study(name="a/b"), r"name: .*directory-safe"),
    "missing base file": (study(base="nowhere.yaml"), r"base: no such file"),
    "set of a swept key": (
        study(set={"model.depth": 3}, grid={"model.depth": [2, 4]}),
        r"set.model.depth: model.depth is swept",
    ),
    "set of the seed": (study(set={"seed": 3}), r"set: .*seeds:"),
    "set of an unknown key": (study(set={"train.stepz": 3}), r"train.stepz: unknown key"),
    "same config twice": (study(variants=[{"model.depth": 2}, {"model.depth": 2.0}]), r"give the same config"),
    "combination invalid": (study(grid={"model.levels": [2, 4]}), r"model.levels=4\): .*not divisible"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_files_name_file_and_key(tmp_path, case):
    spec, pattern = BAD[case]
    path = write(tmp_path, spec, "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert re.search(pattern, message), message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "name: t\nseeds: [0, 1\n", "broken.yaml")
    with pytest.raises(ConfigError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_study(path)


def test_slurm_time_formats():
    assert [parse_time_minutes(t) for t in (90, "90", "30:00", "2:00:00", "1-00:00:00", "0:30")] == [
        90,
        90,
        30,
        120,
        1440,
        1,
    ]
    with pytest.raises(ValueError, match="HH:MM:SS"):
        parse_time_minutes("two hours")


SHIPPED = sorted(STUDIES.glob("*.yaml")) + sorted(STUDIES.glob("paper/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(STUDIES)) for p in SHIPPED])
def test_shipped_studies_are_valid_and_say_how_to_run_them(path):
    runs = expand(load_study(path))
    header = path.read_text().split("\nname:")[0]
    assert f"glow-repro run studies/{path.relative_to(STUDIES)}" in header
    assert "cost" in header.lower()
    assert load_study(path).reference
    assert len({r.run_id for r in runs}) == len(runs) >= 4


def test_permutation_ablation_covers_the_paper_grid():
    runs = expand(load_study(STUDIES / "permutation_ablation.yaml"))
    cells = {(r.config.model.permutation, r.config.model.coupling) for r in runs}
    assert cells == {(p, c) for p in ("reverse", "shuffle", "conv1x1") for c in ("additive", "affine")}
    assert {r.seed for r in runs} == {100, 101, 102, 103} and len(runs) == 24
    assert runs[0].config.data.dataset == "fashion-mnist"


@pytest.mark.parametrize("name", ["permutation_ablation", "scale_ablation", "depth_ablation"])
def test_paper_studies_use_the_papers_settings(name):
    runs = expand(load_study(STUDIES / "paper" / f"{name}.yaml"))
    assert {r.seed for r in runs} == {0, 1, 2}
    for run in runs:
        cfg = run.config
        assert cfg.data.dataset == "cifar10" and cfg.data.shape == (3, 32, 32)
        assert cfg.model.width == 512 and cfg.data.n_bits == 8
        assert cfg.train.optimizer == "adamax" and cfg.train.batch_size == 64
        assert cfg.train.warmup_steps > 0
        if name != "scale_ablation":
            assert cfg.train.lr == 1e-3
        if name != "depth_ablation":
            assert (cfg.model.depth, cfg.model.levels) == (32, 3)
    assert (32, 3) in {(r.config.model.depth, r.config.model.levels) for r in runs}


def test_a_specs_source_is_the_file_it_was_read_from(tmp_path):
    path = write(tmp_path, {"name": "t", "base": BASE, "seeds": [0]})
    spec = load_study(path)
    assert spec.source == str(path) and with_overrides(spec, ["train.steps=3"]).source == str(path)
    assert "source" not in yaml.safe_load(spec_yaml(spec))
    bad = write(tmp_path, {"name": "t", "base": BASE, "seeds": [0], "source": "elsewhere.yaml"}, "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: source: not a key of a study file"):
        load_study(bad)
