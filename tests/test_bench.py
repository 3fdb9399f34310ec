"""``glow-repro bench`` measures and reports without timed assertions."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.commands.bench import PRESETS, REPOSITORY
from glow_repro.core.config import load_run_config
from glow_repro.core.objectives import class_conditional
from glow_repro.run import benchmark
from glow_repro.run.benchmark import measure
from glow_repro.run.engine import Engine
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


def test_bench_command_prints_a_summary_and_rejects_bad_overrides(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setattr(benchmark, "native_bf16", lambda device: False)
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
        "--json",
        str(tmp_path / "bench.json"),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output and "parameters" in result.output and "evaluate" in result.output
    assert "float32 arithmetic" in result.output and "host reads 1 per training step" in result.output
    assert "bf16       not native on this CPU: train.precision: bf16 would be emulated" in result.output
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["native_bf16"] is False and written["train_images_per_s"] > 0
    assert written["config"]["model"]["width"] == 8 and written["model"].startswith("1x8x8, K=1, L=2, width 8")
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
    step, sums = Engine.step, class_conditional.class_sums

    def recording_step(self, x, lr, monitor=None, y=None):
        seen["labels"].append(y)
        return step(self, x, lr, monitor, y)

    def recording_sums(*args, **kwargs):
        seen["class_sums"] += 1
        return sums(*args, **kwargs)

    monkeypatch.setattr(Engine, "step", recording_step)
    monkeypatch.setattr(class_conditional, "class_sums", recording_sums)
    config = tiny_config(RUNS, {"model": {"conditioning": "class"}})
    result = measure(config, torch.device("cpu"), steps=1, repeats=2)
    labels = seen["labels"]
    assert labels and all(y is not None and y.shape == (config.train.batch_size,) for y in labels)
    assert all(int(y.min()) >= 0 and int(y.max()) < 2 for y in labels)  # synthetic: blob, stripes
    assert seen["class_sums"] == 2 and result.eval_images_per_s > 0


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu avx2 amx_tile amx_bf16 amx_int8", True),
        ("fpu avx2 avx512f avx512bw avx512_vnni", False),  # AVX-512 without its BF16 extension
        ("fpu avx2 avx512_bf16x", False),  # a whole flag, not a prefix
    ],
)
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpu = "processor\t: {n}\nmodel name\t: a CPU with avx512_bf16 in its name\nflags\t\t: {flags}\n\n"
    cpuinfo.write_text("".join(cpu.format(n=n, flags=flags) for n in range(2)))
    assert benchmark.native_bf16(torch.device("cpu"), cpuinfo) is native


def test_native_bf16_is_unknown_without_cpuinfo(tmp_path):
    assert benchmark.native_bf16(torch.device("cpu"), tmp_path / "absent") is None


@pytest.mark.parametrize("supported", [True, False])
def test_native_bf16_on_cuda_asks_torch_without_emulation(monkeypatch, supported):
    """``torch.cuda.is_bf16_supported()`` counts emulation as support by default: asked without."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return True if including_emulation else supported  # any GPU emulates bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert benchmark.native_bf16(torch.device("cuda")) is supported and asked == [False]
