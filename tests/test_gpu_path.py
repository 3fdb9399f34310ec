"""The CUDA path, checked on the CPU: resume with the RNG state kept on the CPU, TF32 and
cuDNN flags set from the config both ways and restored, one GPU per process, and a training
step without host reads or graph breaks."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

from glow_repro.core.config import RunConfig
from glow_repro.core.data import load_split
from glow_repro.run.distributed import DistContext
from glow_repro.run.rundir import RunDir
from glow_repro.run.train import train
from glow_repro.run.training_run import TrainingRun

TINY = {
    "data": {"dataset": "synthetic", "synthetic_size": 64, "image_size": 8},
    "model": {"depth": 2, "levels": 2, "width": 8},
    "train": {
        "steps": 4,
        "batch_size": 8,
        "eval_every": 4,
        "checkpoint_every": 2,
        "device": "cpu",
        "optimizer": "adamax",
        "progress": False,
        "n_samples": 2,
    },
}


def config(**train_options) -> RunConfig:
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(train_options)
    return RunConfig.model_validate(raw)


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_a_checkpoint_resumes_on_another_device_with_the_rng_state_on_the_cpu(tmp_path):
    """The meta device stands in for a GPU: the checkpoint's weights go to the run's device,
    its CPU RNG state stays on the CPU (``torch.set_rng_state`` takes no other)."""
    cfg = config()
    train(cfg, tmp_path / "run", threads=1)
    training = TrainingRun(
        cfg,
        RunDir(tmp_path / "run"),
        torch.device("meta"),
        load_split(cfg.data, "train"),
        load_split(cfg.data, "test"),
        DistContext(),
    )
    expected = torch.load(RunDir(tmp_path / "run").checkpoint, weights_only=False)["torch_rng"]
    torch.manual_seed(123)
    training.load_checkpoint()
    assert training.step == 4 and torch.equal(torch.get_rng_state(), expected)
    assert next(training.engine.model.parameters()).device.type == "meta"


def test_an_adamax_checkpoint_from_cuda_resumes_on_the_cpu():
    """On CUDA Adamax is ``capturable`` (its step counters on the GPU), which the CPU refuses:
    a checkpoint carries the flag, and the engine that loads it keeps its own."""
    from glow_repro.core.objective import preprocess
    from glow_repro.run.engine import Engine

    cfg = config()
    engine = Engine(cfg, torch.device("cpu"))
    x = preprocess(torch.randint(0, 256, (8, *cfg.data.shape), dtype=torch.uint8), cfg.data.n_bits)
    engine.initialise(x)
    engine.step(x, 1e-3)
    state = engine.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True  # as written on CUDA
    resumed = Engine(cfg, torch.device("cpu"))
    resumed.load_state_dict(state)
    following = engine.step(x, 1e-3)
    assert following.fault is None and resumed.step(x, 1e-3) == following


FLAGS = {
    "matmul_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
    "cudnn_tf32": (torch.backends.cudnn, "allow_tf32"),
    "cudnn_deterministic": (torch.backends.cudnn, "deterministic"),
}


def read_flags() -> dict[str, bool]:
    return {key: getattr(owner, name) for key, (owner, name) in FLAGS.items()}


@pytest.fixture
def process_flags():
    """The process's flags, put back after the test (they are not plain attributes, which
    monkeypatch needs)."""
    saved = read_flags()
    yield
    for key, (owner, name) in FLAGS.items():
        setattr(owner, name, saved[key])


@pytest.mark.parametrize("value", [False, True])
def test_tf32_and_determinism_follow_the_config_both_ways_and_are_restored(tmp_path, monkeypatch, process_flags, value):
    """A run sets TF32 for matrix products and cuDNN, and cuDNN determinism, to its config's
    values while it trains (cuDNN's TF32 is on by default: float32 must switch it off) and
    leaves the process's settings as it found them."""
    from glow_repro.run.engine import Engine

    seen = []
    step = Engine.step
    monkeypatch.setattr(Engine, "step", lambda self, *a, **k: seen.append(read_flags()) or step(self, *a, **k))
    before = {key: not value for key in FLAGS}
    for key, (owner, name) in FLAGS.items():
        setattr(owner, name, before[key])
    train(config(steps=2, tf32=value, deterministic=value), tmp_path / "run", threads=1)
    assert seen and all(flags == dict.fromkeys(FLAGS, value) for flags in seen)
    assert read_flags() == before


@pytest.mark.parametrize("value", [False, True])
def test_sample_draws_in_the_runs_numerics_as_training_did(tmp_path, monkeypatch, process_flags, value):
    """``glow-repro sample`` sets the flags the run trained with while it draws (the process
    had them the other way) and restores them; neither it nor training's own samples run in
    autocast, also for a bf16 run, so the command rewrites training's grids."""
    from click.testing import CliRunner

    from glow_repro.cli import main
    from glow_repro.core.model import Glow

    seen = []
    sample = Glow.sample

    def recording_sample(self, *args, **kwargs):
        seen.append({**read_flags(), "autocast": torch.is_autocast_enabled("cpu")})
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(Glow, "sample", recording_sample)
    train(config(steps=2, tf32=value, deterministic=value, precision="bf16"), tmp_path / "run", threads=1)
    in_training, seen[:] = list(seen), []
    before = {key: not value for key in FLAGS}
    for key, (owner, name) in FLAGS.items():
        setattr(owner, name, before[key])
    result = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    expected = {**dict.fromkeys(FLAGS, value), "autocast": False}
    assert seen and in_training and all(flags == expected for flags in seen + in_training)
    assert read_flags() == before


def test_manipulate_runs_in_the_runs_numerics(tmp_path, monkeypatch, process_flags):
    """``glow-repro manipulate`` moves latents and decodes them with the flags the run trained
    with, as ``sample`` does, and restores the process's own."""
    from click.testing import CliRunner

    import glow_repro.run.manipulation as manipulation
    from glow_repro.cli import main

    seen = []
    original = manipulation.manipulate
    monkeypatch.setattr(manipulation, "manipulate", lambda *a, **k: seen.append(read_flags()) or original(*a, **k))
    train(config(steps=2, tf32=True, deterministic=True), tmp_path / "run", threads=1)
    before = dict.fromkeys(FLAGS, False)
    for owner, name in FLAGS.values():
        setattr(owner, name, False)
    result = CliRunner().invoke(
        main, ["manipulate", str(tmp_path / "run"), "--attribute", "stripes", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert seen == [dict.fromkeys(FLAGS, True)] and read_flags() == before


@pytest.fixture
def gpus(monkeypatch):
    """A fake CUDA host: ``gpus(n)`` shows ``n`` devices; the current one is 0."""

    def show(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    return show


@pytest.mark.parametrize("visible, expected", [(4, 3), (1, 0)])
def test_a_rank_takes_its_local_gpu_or_the_only_one_it_sees(gpus, visible, expected):
    gpus(visible)
    rank = DistContext(rank=7, world_size=8, local_rank=3)
    assert rank.device("cuda") == torch.device("cuda", expected)
    assert rank.device("cpu") == torch.device("cpu")
    assert DistContext().device("cuda") == torch.device("cuda", 0)  # a single process: the current GPU


def test_the_nccl_group_starts_on_the_rank_gpu_after_it_is_made_current(gpus, monkeypatch):
    import torch.distributed as dist

    from glow_repro.run.distributed import from_environment

    gpus(2)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist, "init_process_group", lambda **kwargs: calls.append(("init", kwargs["backend"], kwargs.get("device_id")))
    )
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    context = from_environment("cuda")
    gpu = torch.device("cuda", 1)
    assert calls == [("set_device", gpu), ("init", "nccl", gpu)]
    assert (context.rank, context.world_size, context.local_rank) == (1, 2, 1)


def _task(tmp_path, name: str, device: str):
    from glow_repro.study.launchers import RunTask

    return RunTask(name, "v", 0, config(device=device), str(tmp_path / name))


def test_the_local_launcher_deals_runs_round_robin_to_the_gpus(gpus, tmp_path):
    from glow_repro.study.launchers.local import deal_gpus

    tasks = [_task(tmp_path, f"r{i}", device) for i, device in enumerate(["auto", "cuda", "cpu", "auto", "auto"])]
    gpus(3)
    assert [task.gpu for task in deal_gpus(tasks)] == [0, 1, None, 2, 0]
    gpus(1)
    assert [task.gpu for task in deal_gpus(tasks)] == [None] * 5


def test_a_worker_makes_its_run_gpu_current_before_training(tmp_path, monkeypatch):
    from glow_repro.study.launchers import execute_run

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda gpu: calls.append(("set_device", gpu)))

    def fake_train(*args, **kwargs):
        calls.append(("train",))
        return {"state": "done"}

    task = dataclasses.replace(_task(tmp_path, "run", "auto"), gpu=2, train_fn=fake_train)
    assert execute_run(task).state == "done"
    assert calls == [("set_device", 2), ("train",)]


def test_ddp_leaves_the_constant_buffers_alone(monkeypatch):
    """Every buffer (ActNorm flags, LU masks, permutations) is fixed once ActNorm is
    initialised, so DDP does not broadcast them before each forward."""
    import glow_repro.run.engine as engine_module

    wrapped = {}
    monkeypatch.setattr(
        engine_module, "DistributedDataParallel", lambda module, **kwargs: wrapped.update(kwargs) or module
    )
    engine = engine_module.Engine(config(), torch.device("cpu"), DistContext(rank=0, world_size=2))
    engine.wrap()
    assert wrapped == {"device_ids": None, "broadcast_buffers": False}


def _initialised_engine(**train_options):
    from glow_repro.core.objective import preprocess
    from glow_repro.run.engine import Engine

    cfg = config(optimizer="adam", **train_options)
    engine = Engine(cfg, torch.device("cpu"))
    x = preprocess(torch.randint(0, 256, (8, *cfg.data.shape), dtype=torch.uint8), cfg.data.n_bits)
    engine.initialise(x)
    return cfg, engine, x


@pytest.mark.parametrize("grad_checkpointing, ema_decay", [(False, None), (True, None), (False, 0.999)])
def test_a_training_step_reads_the_device_twice(grad_checkpointing, ema_decay):
    """Once for the bpd and gradient norm together, once for the parameters' finiteness after
    the update: no per-layer reads (each a wait for the GPU), also when the backward pass
    recomputes the flow steps or the step updates an EMA of the weights. The count holds for
    fused Adam; foreach Adamax adds one read per parameter of a CPU step counter, which
    ``capturable`` removes on CUDA."""
    from glow_repro.run.benchmark import count_host_reads
    from glow_repro.run.stability import StabilityMonitor

    cfg, engine, x = _initialised_engine(grad_checkpointing=grad_checkpointing, ema_decay=ema_decay)
    monitor = StabilityMonitor(cfg.monitor, engine.model, "run")
    engine.wrap()
    engine.step(x, 1e-3, monitor)
    with count_host_reads() as reads:
        result = engine.step(x, 1e-3, monitor)
    assert result.fault is None and reads.count == 2


def test_a_class_conditional_step_reads_the_device_twice_too():
    """The class shift of the priors and the classifier's loss add no read of their own
    (``F.one_hot`` would check the labels' range on the host)."""
    from glow_repro.core.objective import preprocess
    from glow_repro.run.benchmark import count_host_reads
    from glow_repro.run.engine import Engine
    from glow_repro.run.stability import StabilityMonitor

    raw = json.loads(json.dumps(TINY))
    raw["model"]["conditioning"] = "class"
    raw["train"]["optimizer"] = "adam"
    cfg = RunConfig.model_validate(raw)
    engine = Engine(cfg, torch.device("cpu"))
    x = preprocess(torch.randint(0, 256, (8, *cfg.data.shape), dtype=torch.uint8), cfg.data.n_bits)
    y = torch.arange(8) % engine.model.n_classes
    engine.initialise(x)
    monitor = StabilityMonitor(cfg.monitor, engine.model, "run")
    engine.wrap()
    engine.step(x, 1e-3, monitor, y)
    with count_host_reads() as reads:
        result = engine.step(x, 1e-3, monitor, y)
    assert result.fault is None and result.terms["train_class_bits"] is not None and reads.count == 2


def test_the_training_forward_compiles_to_one_graph_without_breaks():
    """``torch._dynamo.explain`` of the loss of an initialised model in training mode."""
    from glow_repro.core.objective import training_loss

    cfg, engine, x = _initialised_engine()
    engine.model.train()
    explanation = torch._dynamo.explain(training_loss)(engine.model, x, cfg.data.n_bits)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.parametrize(
    "mode, expected",
    [(True, None), ("default", "default"), ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")],
)
def test_train_compile_takes_a_mode_and_leaves_the_run_id_alone(monkeypatch, mode, expected):
    import glow_repro.run.engine as engine_module
    from glow_repro.core.config import run_identity

    compiled = []
    monkeypatch.setattr(engine_module.torch, "compile", lambda module, mode: compiled.append(mode) or module)
    engine_module.Engine(config(compile=mode), torch.device("cpu")).wrap()
    assert compiled == [expected]
    assert run_identity(config(compile=mode)) == run_identity(config())


def test_an_unknown_compile_mode_is_one_clear_line():
    from glow_repro.core.config import ConfigError, validate_model

    raw = config().to_dict()
    raw["train"]["compile"] = "fastest"
    with pytest.raises(ConfigError, match=r"train\.compile: must be one of .*'reduce-overhead'") as err:
        validate_model(RunConfig, raw, "cfg.yaml")
    assert "\n" not in str(err.value)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
@pytest.mark.usefixtures("process_flags")
def test_a_cuda_step_reads_the_device_twice(optimizer):
    """With capturable Adamax too: its step counters live on the GPU."""
    from glow_repro.core.objective import preprocess
    from glow_repro.run.benchmark import count_host_reads
    from glow_repro.run.engine import Engine, numerics
    from glow_repro.run.stability import StabilityMonitor

    cfg = config(device="cuda", optimizer=optimizer)
    with numerics(cfg.train):
        engine = Engine(cfg, torch.device("cuda", 0))
        x = engine.to_device(preprocess(torch.randint(0, 256, (8, *cfg.data.shape), dtype=torch.uint8), 8))
        engine.initialise(x)
        monitor = StabilityMonitor(cfg.monitor, engine.model, "run")
        engine.step(x, 1e-3, monitor)
        with count_host_reads() as reads:
            engine.step(x, 1e-3, monitor)
    assert reads.count == 2


@pytest.mark.cuda
@needs_cuda
def test_a_cuda_run_resumes_bit_exactly_with_deterministic_cudnn(tmp_path):
    from glow_repro.core.config import dump_run_config

    whole = config(device="cuda", deterministic=True, steps=8, checkpoint_every=4, eval_every=8)
    train(whole.model_copy(update={"train": whole.train.model_copy(update={"steps": 4})}), tmp_path / "split")
    RunDir(tmp_path / "split").config.write_text(dump_run_config(whole))
    train(whole, tmp_path / "split")
    train(whole, tmp_path / "whole")
    rows = [
        [{k: r[k] for k in ("step", "train_bpd", "grad_norm")} for r in RunDir(tmp_path / name).metrics.read()]
        for name in ("split", "whole")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 8


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu: every stage ends with exit 0 and prints its results."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script), "--cpu"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET": "800"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("== summary") :].splitlines()[1:]
    assert summary and all(": exit 0 after" in line for line in summary), summary
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    options = [r for r in results if r["stage"] == "options"]
    assert len(options) >= 6 and all("error" not in r and r["host_reads_per_step"] == 1 for r in options)
    by_stage = {r["stage"]: r for r in results}
    assert by_stage["resume"]["deterministic_exact"] and by_stage["ddp"]["max_loss_gap"] == 0.0
    assert by_stage["precision"]["max_train_bpd_gap"] < 0.02
