"""Loading a results directory into long tables.

The fake results directory built here (:func:`make_fake_study`) is also used by
``test_report.py``: 2 permutations x 2 couplings x 3 seeds with known curves, where one run
failed mid-way and one diverged with stability events.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from glow_repro.core.config import RunConfig, dump_run_config, validate_model
from glow_repro.errors import ResultsDirError
from glow_repro.study.labels import describe, format_value, short_names
from glow_repro.study.tables import config_differences, load_tables, write_tables

PERMUTATIONS = ("reverse", "conv1x1")
COUPLINGS = ("additive", "affine")
SEEDS = (0, 1, 2)
#: Final bpd level of each (permutation, coupling) cell; seeds add -0.01, 0, +0.01.
BASE = {("reverse", "additive"): 3.0, ("reverse", "affine"): 2.9,
        ("conv1x1", "additive"): 2.8, ("conv1x1", "affine"): 2.7}  # fmt: skip
EVAL_STEPS = (0, 100, 200, 300, 400)
FAILED = ("reverse", "additive", 2)
DIVERGED = ("reverse", "affine", 1)


def bpd_at(permutation: str, coupling: str, seed: int, step: int) -> float:
    """The fake test-bpd curve: the cell's level plus a decaying excess."""
    return BASE[(permutation, coupling)] + (seed - 1) * 0.01 + 2.0 * math.exp(-step / 100)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_fake_study(root: Path, dataset: str = "fashion-mnist", image_size: int = 32,
                    channels: int | None = None, steps_per_epoch: float = 100) -> Path:  # fmt: skip
    """Write ``root/fake_ablation`` as the runner and ``train()`` would; return its path."""
    results = root / "fake_ablation"
    study = {
        "name": "fake_ablation",
        "description": "fake permutation x coupling study for tests",
        "reference": "Glow Figure 3",
        "base": {"data": {"dataset": dataset}},
        "grid": {"model.permutation": list(PERMUTATIONS), "model.coupling": list(COUPLINGS)},
        "seeds": list(SEEDS),
        "claims": [
            {
                "id": "permutation-order",
                "source": "Glow, Figure 3",
                "key": "model.permutation",
                "order": ["conv1x1", "reverse"],
                "within": ["model.coupling"],
            },
            {
                "id": "affine-beats-additive",
                "source": "Glow, Figure 3",
                "key": "model.coupling",
                "order": ["affine", "additive"],
                "within": ["model.permutation"],
            },
        ],
    }
    results.mkdir(parents=True)
    (results / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    for permutation in PERMUTATIONS:
        for coupling in COUPLINGS:
            for seed in SEEDS:
                raw = {
                    "data": {"dataset": dataset, "image_size": image_size, "channels": channels},
                    "model": {"permutation": permutation, "coupling": coupling, "depth": 2, "levels": 2},
                    "train": {"steps": 400, "eval_every": 100, "threads": 1 + seed % 2},
                    "seed": seed,
                }
                config = validate_model(RunConfig, raw, "test")
                run = results / "runs" / f"{permutation[:3]}-{coupling[:3]}-s{seed}"
                _write_run(run, config, permutation, coupling, seed, steps_per_epoch)
    return results


def _write_run(run: Path, config: RunConfig, permutation: str, coupling: str, seed: int,
               steps_per_epoch: float) -> None:  # fmt: skip
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_run_config(config))
    key = (permutation, coupling, seed)
    last = 150 if key == FAILED else 250 if key == DIVERGED else 400
    metrics = [{"step": s, "train_bpd": bpd_at(permutation, coupling, seed, s) - 0.1, "lr": 1e-3,
                "grad_norm": 1.0, "step_time": 0.01, "images_per_s": 6400.0, "wall_time": s * 0.01,
                "epoch": s / steps_per_epoch} for s in range(10, last + 1, 10)]  # fmt: skip
    evals = [{"step": s, "test_bpd": bpd_at(permutation, coupling, seed, s), "n_images": 512,
              "wall_time": s * 0.01, "epoch": s / steps_per_epoch} for s in EVAL_STEPS if s <= last]  # fmt: skip
    _jsonl(run / "metrics.jsonl", metrics)
    _jsonl(run / "evals.jsonl", evals)
    (run / "environment.json").write_text(json.dumps(
        {"torch": "2.14.1", "python": "3.11.2", "device": "cpu", "threads": 1,
         "git_commit": "abc1234", "host": "testhost", "cpu": "fake cpu"}))  # fmt: skip
    if key == FAILED:
        (run / "status.json").write_text(json.dumps({"state": "failed", "step": last, "error": "RuntimeError: boom"}))
        return
    if key == DIVERGED:
        _jsonl(run / "events.jsonl", [
            {"step": 240, "kind": "spike", "value": 50.0, "threshold": 10.0, "layer": None, "lr": 1e-3, "time": 1.0},
            {"step": 250, "kind": "nonfinite", "value": None, "threshold": None, "layer": "flow.3", "lr": 1e-3, "time": 2.0},
        ])  # fmt: skip
    state = "diverged" if key == DIVERGED else "done"
    (run / "status.json").write_text(json.dumps({"state": state, "step": last}))
    finals = [e["test_bpd"] for e in evals]
    summary = {"state": state, "step": last, "final_test_bpd": None if key == DIVERGED else finals[-1],
               "best_test_bpd": min(finals), "initial_test_bpd": finals[0], "wall_time": last * 0.01,
               "n_params": 1000 + 100 * PERMUTATIONS.index(permutation), "diverged": key == DIVERGED,
               "first_nonfinite_step": 250 if key == DIVERGED else None,
               "reconstruction_error": 1e-5, "images_per_s": 6400.0}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "samples").mkdir()
    Image.new("RGB", (32, 16), (40 * seed, 100, 200)).save(run / "samples" / "temperatures.png")


@pytest.fixture
def fake_study(tmp_path: Path) -> Path:
    return make_fake_study(tmp_path)


ID_AND_SWEPT = ["run_id", "variant", "seed", "model.permutation", "model.coupling"]


def test_tables_have_ids_swept_settings_and_one_row_per_record(fake_study: Path) -> None:
    tables = load_tables(fake_study)
    assert tables.swept == ["model.permutation", "model.coupling"]  # grid order; threads excluded
    for name in ("steps", "evals", "finals", "events"):
        assert list(getattr(tables, name).columns[:5]) == ID_AND_SWEPT, name
    assert len(tables.finals) == 12 and tables.finals["run_id"].is_unique
    # 10 full runs x 40 logged steps + the failed run (15) + the diverged run (25)
    assert len(tables.steps) == 10 * 40 + 15 + 25
    assert len(tables.evals) == 10 * 5 + 2 + 3
    assert len(tables.events) == 2
    assert list(dict.fromkeys(tables.finals["variant"])) == [
        "permutation=reverse, coupling=additive", "permutation=reverse, coupling=affine",
        "permutation=conv1x1, coupling=additive", "permutation=conv1x1, coupling=affine",
    ]  # fmt: skip


def test_finals_carry_state_divergence_and_event_counts(fake_study: Path) -> None:
    finals = load_tables(fake_study).finals.set_index("run_id")
    assert finals.loc["rev-add-s2", "state"] == "failed"
    assert finals.loc["rev-add-s2", "error"] == "RuntimeError: boom"
    assert math.isnan(finals.loc["rev-add-s2", "final_test_bpd"])
    assert finals.loc["rev-add-s2", "wall_time"] == pytest.approx(1.5)  # from the last metrics row
    assert finals.loc["rev-aff-s1", "state"] == "diverged"
    assert bool(finals.loc["rev-aff-s1", "diverged"]) is True
    assert finals.loc["rev-aff-s1", "first_nonfinite_step"] == 250
    assert finals.loc["rev-aff-s1", "n_events_spike"] == 1
    assert finals.loc["rev-aff-s1", "n_events_nonfinite"] == 1
    assert finals.loc["con-aff-s0", "n_events_spike"] == 0
    assert finals.loc["con-aff-s0", "final_test_bpd"] == pytest.approx(bpd_at("conv1x1", "affine", 0, 400))
    assert finals.loc["con-aff-s0", "final_epoch"] == 4.0
    assert finals.loc["con-aff-s0", "env_git_commit"] == "abc1234"


def test_write_tables_round_trips_through_parquet_and_csv(fake_study: Path, tmp_path: Path) -> None:
    tables = load_tables(fake_study)
    written = write_tables(tables, tmp_path / "tables")
    assert {p.name for p in written} >= {"steps.parquet", "evals.csv", "finals.parquet", "events.csv"}
    evals = pd.read_parquet(tmp_path / "tables" / "evals.parquet")
    pd.testing.assert_frame_equal(evals, tables.evals, check_dtype=False)
    finals = pd.read_csv(tmp_path / "tables" / "finals.csv")
    assert list(finals["run_id"]) == list(tables.finals["run_id"])


def test_config_differences_lists_swept_keys_and_incidental_ones(fake_study: Path) -> None:
    diff = config_differences(fake_study).set_index("key")
    assert set(diff.index) == {"model.permutation", "model.coupling", "seed", "train.threads"}
    assert diff.loc["model.permutation", "values"] == "reverse, conv1x1"
    assert diff.loc["seed", "values"] == "0, 1, 2"
    assert bool(diff.loc["model.coupling", "swept"]) and not bool(diff.loc["train.threads", "swept"])


def test_variant_labels_use_short_names_unless_ambiguous() -> None:
    assert short_names(["model.depth", "a.lr", "b.lr"]) == {"model.depth": "depth", "a.lr": "a.lr", "b.lr": "b.lr"}
    assert describe({"model.permutation": "conv1x1", "train.lr": 1e-3}) == "permutation=conv1x1, lr=0.001"
    assert describe({}) == "base"


@pytest.mark.parametrize("value, text", [
    (None, "null"), (float("nan"), "null"), (np.float64("nan"), "null"),
    (True, "true"), (False, "false"), (np.bool_(True), "true"), (pd.Series([False]).iloc[0], "false"),
    (0.001, "0.001"), (1.0, "1"), (np.float32(0.5), "0.5"), (8, "8"), (np.int64(8), "8"),
    ("1e-3", "0.001"), ("1.0e5", "100000"), ("conv1x1", "conv1x1"), ("1e3x", "1e3x"),
    ([16, 32], "16x32"), ((0.7, 1.0), "0.7x1"), ([True, None], "truexnull"),
])  # fmt: skip
def test_format_value_gives_the_same_text_whatever_type_holds_the_value(value, text) -> None:
    assert format_value(value) == text


def test_labels_import_neither_torch_nor_pandas() -> None:
    code = "import sys, glow_repro.study.labels; sys.exit(bool({'torch', 'pandas'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_key_varied_outside_the_grid_becomes_a_swept_column(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    for i, run in enumerate(sorted((results / "runs").iterdir())):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["train"]["lr"] = [1e-3, 2e-3][i % 2]
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    tables = load_tables(results)
    assert tables.swept == ["model.permutation", "model.coupling", "train.lr"]
    assert "permutation=conv1x1, coupling=affine, lr=0.002" in set(tables.finals["variant"])
    assert list(tables.evals.columns[:6]) == [*ID_AND_SWEPT, "train.lr"]


def test_a_list_valued_axis_keeps_the_grid_order(tmp_path: Path) -> None:
    results = make_fake_study(tmp_path)
    study = yaml.safe_load((results / "study.yaml").read_text())
    study["grid"]["train.sample_temperatures"] = [[1.0], [0.7, 0.5]]  # not sorted, as text or number
    (results / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    for i, run in enumerate(sorted((results / "runs").iterdir())):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["train"]["sample_temperatures"] = study["grid"]["train.sample_temperatures"][i % 2]
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    variants = list(dict.fromkeys(load_tables(results).finals["variant"]))
    assert variants[:2] == [
        "permutation=reverse, coupling=additive, sample_temperatures=[1.0]",
        "permutation=reverse, coupling=additive, sample_temperatures=[0.7, 0.5]",
    ]


@pytest.mark.parametrize("make", [
    lambda p: p / "missing",
    lambda p: p,  # a directory without runs/
    lambda p: (p / "runs").mkdir() or p,  # runs/ but no run has a config yet
])  # fmt: skip
def test_not_a_results_directory_is_a_one_line_user_error(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(ResultsDirError) as err:
        load_tables(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_status_file_that_cannot_be_read_is_unreadable_not_pending(fake_study: Path) -> None:
    (fake_study / "runs" / "con-aff-s0" / "status.json").write_text("[1, 2")
    (fake_study / "runs" / "con-aff-s1" / "status.json").write_text('["done"]')  # JSON, wrong shape
    (fake_study / "runs" / "con-aff-s2" / "status.json").unlink()
    finals = load_tables(fake_study).finals.set_index("run_id")
    states = finals.loc[["con-aff-s0", "con-aff-s1", "con-aff-s2"], "state"]
    assert states.tolist() == ["unreadable", "unreadable", "pending"]
    assert finals.loc["con-aff-s0", "error"] == "status.json could not be read"
