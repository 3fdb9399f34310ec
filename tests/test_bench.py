"""``glow-repro bench`` measures and reports without timed assertions."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from glow_repro.benchmark import measure
from glow_repro.cli import main
from glow_repro.commands.bench import PRESETS, REPOSITORY
from glow_repro.config import load_run_config
from tests.conftest import tiny_config

RUNS = {"model": {"depth": 1, "width": 8}, "train": {"batch_size": 4}}


def test_measure_reports_rates_memory_and_parameters():
    torch.set_num_threads(1)
    result = measure(tiny_config(RUNS), torch.device("cpu"), steps=1, repeats=2, monitor=True)
    assert len(result.train_rates) == 2 and result.train_images_per_s > 0
    assert result.sample_images_per_s > 0 and result.eval_images_per_s > 0 and result.peak_memory_mb > 0
    assert result.n_params > 0 and result.monitor_fraction > 0
    assert result.train_tflops is None  # FLOP rates are reported for GPUs only
    assert result.arithmetic == "float32" and result.host_reads_per_step == 1


def test_bench_command_prints_a_summary_and_rejects_bad_overrides(tmp_path):
    runner = CliRunner()
    args = [
        "bench",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--set",
        "model.depth=1",
        "--set",
        "model.width=8",
        "--set",
        "train.batch_size=2",
        "--set",
        "data.image_size=8",
        "--set",
        "model.levels=2",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output and "parameters" in result.output and "evaluate" in result.output
    assert "float32 arithmetic" in result.output and "host reads 1 per training step" in result.output
    bad = runner.invoke(main, ["bench", "--set", "model.coupling=both"])
    assert bad.exit_code == 2 and "model.coupling: must be one of" in bad.output


def test_presets_are_the_config_files_the_help_describes():
    shapes = {}
    for name, path in PRESETS.items():
        config = load_run_config(REPOSITORY / path)
        m = config.model
        shapes[name] = (config.data.shape, m.depth, m.levels, m.width, config.train.batch_size)
    assert shapes == {"reference": ((1, 32, 32), 8, 3, 128, 32), "paper-cifar10": ((3, 32, 32), 32, 3, 512, 64)}
