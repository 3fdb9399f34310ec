"""``glow-repro plan``: a study's cost at a throughput, checked against what the CPU studies
cost when they ran, and the seeds its claims need (docs/cost.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from statsmodels.stats.power import TTestPower

from glow_repro.analysis.cost import study_cost
from glow_repro.cli import main
from glow_repro.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
PERMUTATION = ROOT / "studies" / "permutation_ablation.yaml"


def plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["plan", *map(str, args)])
    return result.exit_code, result.output


def wall_minutes(study: Path, seeds: int, images_per_s: float, workers: int) -> float:
    return study_cost(load_study(study)).device_seconds(seeds, images_per_s) / workers / 60


@pytest.mark.parametrize(
    ("study", "seeds", "measured_minutes"),
    [("permutation_ablation", 8, 21.4), ("depth_ablation", 8, 12.5)],
)
def test_plan_reproduces_the_measured_wall_time_of_the_cpu_studies(study, seeds, measured_minutes):
    """Measured on the 2-core development machine with 2 workers of 1 thread: the permutation
    study's 48 runs (6 variants x 8 seeds) of 400 steps
    of batch 64 took 21.4 min, 48 x 400 x 64 / (21.4 x 60) = 957 images/s in all, about 480 per
    worker; the depth study's 32 runs (4 variants x 8 seeds, K = 2 to 16) took 12.5 min. At
    480 images/s per worker the plan gives 21.3 and 14.2 min: within 25 %, although the depth
    variants' costs differ 7-fold (a constant throughput prices them alike)."""
    planned = wall_minutes(ROOT / "studies" / f"{study}.yaml", seeds, 480, workers=2)
    assert planned == pytest.approx(measured_minutes, rel=0.25)
    code, output = plan(ROOT / "studies" / f"{study}.yaml", "--images-per-second", 480, "--workers", 2)
    assert code == 0, output
    assert f"{planned:.1f} min" in next(line for line in output.splitlines() if line.startswith(f"{seeds} "))


def test_plan_against_the_cpu_minutes_of_the_shipped_permutation_report():
    """reports/permutation_ablation/tables/finals.csv: 48 runs (seeds 100 to 107), one thread
    each, 38.2 CPU-minutes of recorded wall time in all; their median step throughput was
    780 images/s. The plan at that throughput gives 26.3 minutes: 31 % low, the evaluations
    (5 of 2000 test images per run, EMA weights), samples and start-up it does not count."""
    finals = pd.read_csv(ROOT / "reports" / "permutation_ablation" / "tables" / "finals.csv")
    measured = (finals["wall_time"] * finals["env_threads"] * finals["env_world_size"]).sum() / 60
    seeds = finals["seed"].nunique()
    planned = wall_minutes(PERMUTATION, seeds, finals["images_per_s"].median(), workers=1)
    assert (len(finals), seeds) == (48, 8) and measured == pytest.approx(38.2, abs=0.1)
    assert 0.6 * measured < planned < measured  # below: the plan leaves evaluation out


def test_an_epoch_budget_becomes_the_steps_training_counts():
    """configs/paper_cifar10.yaml: 1800 epochs of 781 drop-last batches of 64 (50,000 images)."""
    cost = study_cost(load_study(ROOT / "studies" / "paper" / "permutation_ablation.yaml"))
    assert {(v.steps, v.batch_size) for v in cost.variants} == {(1800 * 781, 64)} and len(cost.variants) == 6
    assert cost.images_per_seed == 6 * 1800 * 781 * 64
    assert cost.plan.looks == (3, 6, 9, 12)  # no max_seeds: the default 12


def write_study(tmp_path: Path, train: dict, data: dict | None = None, **fields) -> Path:
    spec = {
        "name": "tiny",
        "base": {"data": {"dataset": "synthetic", **(data or {})}, "model": {"depth": 1, "levels": 1}, "train": train},
        "grid": {"model.width": [8, 16]},
        "seeds": [0, 1],
        "claims": [{"id": "wider", "source": "test", "key": "model.width", "order": [16, 8], "min_effect": 0.1}],
        **fields,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_epochs_of_a_small_training_set_and_variants_of_different_length(tmp_path):
    """100 synthetic images in batches of 16: 6 drop-last batches an epoch, 2.5 epochs = 15
    steps; a batch larger than the set takes the whole set, as training does."""
    study = write_study(tmp_path, {"epochs": 2.5, "batch_size": 16, "steps": None}, {"synthetic_size": 100})
    assert [(v.steps, v.batch_size) for v in study_cost(load_study(study)).variants] == [(15, 16)] * 2
    big = write_study(tmp_path, {"epochs": 2, "batch_size": 500, "steps": None}, {"synthetic_size": 100})
    assert [(v.steps, v.images) for v in study_cost(load_study(big)).variants] == [(2, 200)] * 2
    mixed = write_study(tmp_path, {"steps": 10, "batch_size": 4}, variants=[{"train.steps": 10}, {"train.steps": 30}])
    code, output = plan(mixed, "--images-per-second", 4)
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.startswith("per run")]
    assert len(lines) == 4 and sum(line.endswith("10 steps (train.steps) of batch 4: 40 images") for line in lines) == 2
    assert sum(line.endswith("30 steps (train.steps) of batch 4: 120 images") for line in lines) == 2
    assert "per seed       320 images: 0.0222 device-hours" in output


def test_seeds_needed_are_the_verdicts_at_the_last_looks_threshold():
    """permutation-order at min_effect 0.05 bpd with a paired SD of 0.06 (docs/verdicts.md's
    median paired SD of the declared metric): dz 0.83 at the third look's p <= 0.041 needs 15
    seeds (statsmodels: 14.2); one pair's power at the looks rises to about 0.7 at 12 seeds."""
    cost = study_cost(load_study(PERMUTATION))
    claim = cost.spec.claims[0]
    need = cost.need(claim, 0.06)
    threshold = cost.plan.boundary.t_thresholds()[-1]
    expected = TTestPower().solve_power(effect_size=0.05 / 0.06, alpha=threshold, power=0.8)
    assert need.threshold == threshold and need.seeds == math.ceil(expected) == 15
    assert list(need.look_power) == sorted(need.look_power) and 0.6 < need.look_power[-1] < 0.8
    code, output = plan(PERMUTATION, "--images-per-second", 480, "--pilot-sd", "permutation-order=0.06")
    assert code == 0, output
    row = next(line for line in output.splitlines() if line.startswith("15 "))
    assert "permutation-order: fixed design" in row and "1.33" in row  # 15 x 6 x 25,600 / 480 s
    assert "affine-beats-additive: give --pilot-sd affine-beats-additive=SD" in output


def test_a_margin_claim_is_sized_at_its_margin(tmp_path):
    study = write_study(tmp_path, {"steps": 10})
    text = study.read_text().replace("min_effect: 0.1", "min_effect: 0.1\n  margin: 0.02")
    study.write_text(text)
    cost = study_cost(load_study(study))
    assert cost.need(cost.spec.claims[0], 0.04).dz == pytest.approx(0.5)


def test_bench_json_gives_the_throughput(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"train_images_per_s": 480.0, "model": "1x28x28, K=8", "device": "cpu", "threads": 1}))
    by_hand = plan(PERMUTATION, "--images-per-second", 480)[1].splitlines()
    code, output = plan(PERMUTATION, "--bench", bench)
    assert code == 0, output
    assert f"480 images/s per worker ({bench}: 1x28x28, K=8 on cpu (1 threads))" in output
    assert [line for line in output.splitlines() if "throughput" not in line] == [
        line for line in by_hand if "throughput" not in line
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml", "--images-per-second", 1], "missing.yaml: no such file"),
        ([PERMUTATION], "give the training throughput as --images-per-second X or as --bench FILE"),
        ([PERMUTATION, "--images-per-second", 1, "--bench", "b.json"], "--images-per-second X or as --bench FILE"),
        ([PERMUTATION, "--images-per-second", 1, "--pilot-sd", "permutation-order"], "must be CLAIM=SD"),
        ([PERMUTATION, "--images-per-second", 1, "--pilot-sd", "permutation-order=-0.1"], "with a positive SD"),
        ([PERMUTATION, "--images-per-second", 1, "--pilot-sd", "order=0.1"], "has no claim 'order'; its claims: "),
        (
            [
                PERMUTATION,
                "--images-per-second",
                1,
                "--pilot-sd",
                "permutation-order=0.1",
                "--pilot-sd",
                "permutation-order=0.2",
            ],
            "permutation-order is given twice",
        ),
        ([PERMUTATION, "--bench", "absent.json"], "--bench absent.json: no such file; write it with glow-repro bench"),
    ],
)
def test_mistakes_are_one_error_line(args, message):
    code, output = plan(*args)
    assert code == 2 and output.startswith("error: ") and output.count("\n") == 1 and message in output, output


def test_bench_json_without_a_throughput_and_epochs_of_an_unread_image_folder(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"train_images_per_s": 0}))
    code, output = plan(PERMUTATION, "--bench", bench)
    remedy = "write it with glow-repro bench --json FILE"
    assert code == 2 and output == f"error: --bench {bench}: no positive train_images_per_s in it; {remedy}\n"
    folder = write_study(tmp_path, {"epochs": 1, "steps": None}, {"dataset": "imagefolder", "root": str(tmp_path)})
    code, output = plan(folder, "--images-per-second", 1)
    assert code == 2 and "train.epochs: the size of the imagefolder training set is known only once" in output
