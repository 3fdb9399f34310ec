"""``glow-repro bench`` measures and reports without timed assertions."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from glow_repro import benchmark
from glow_repro.benchmark import measure
from glow_repro.cli import main
from glow_repro.commands.bench import PRESETS, REPOSITORY
from glow_repro.config import load_run_config
from glow_repro.engine import Engine
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


def test_a_class_conditional_config_is_timed_on_its_own_objective(monkeypatch):
    """Steps get labels (the --ycond objective, classifier bits included) and evaluation is the
    conditional one (bpd given the label, marginal bpd, accuracy), as in training."""
    torch.set_num_threads(1)
    seen = {"labels": [], "class_sums": 0}
    step, sums = Engine.step, benchmark.class_sums

    def recording_step(self, x, lr, monitor=None, y=None):
        seen["labels"].append(y)
        return step(self, x, lr, monitor, y)

    def recording_sums(*args, **kwargs):
        seen["class_sums"] += 1
        return sums(*args, **kwargs)

    monkeypatch.setattr(Engine, "step", recording_step)
    monkeypatch.setattr(benchmark, "class_sums", recording_sums)
    config = tiny_config(RUNS, {"model": {"conditioning": "class"}})
    result = measure(config, torch.device("cpu"), steps=1, repeats=2)
    labels = seen["labels"]
    assert labels and all(y is not None and y.shape == (config.train.batch_size,) for y in labels)
    assert all(int(y.min()) >= 0 and int(y.max()) < 2 for y in labels)  # synthetic: blob, stripes
    assert seen["class_sums"] == 2 and result.eval_images_per_s > 0
