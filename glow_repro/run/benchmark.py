"""Throughput, memory and FLOP measurements of a config's training step and sampling pass,
shared by ``glow-repro bench`` and ``benchmarks/bench_step.py``; the configs they measure by
default are files (``benchmarks/reference.yaml``, ``configs/paper_cifar10.yaml``).

The step timed is the engine's (:meth:`glow_repro.run.engine.Engine.step`), the one training takes.
Figures are medians over ``repeats`` timed blocks of ``steps`` steps each, after warm-up.
FLOPs of a step are counted once with ``torch.utils.flop_counter`` (convolutions and matrix
products, forward and backward); achieved TFLOP/s is that count over the median step time.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from glow_repro.core.config import RunConfig
from glow_repro.core.objective import preprocess
from glow_repro.core.objectives import EvalSet
from glow_repro.run.engine import Engine, numerics
from glow_repro.run.rundir import RunDir
from glow_repro.run.stability import StabilityMonitor
from glow_repro.run.train import train

#: Dense peak TFLOP/s by GPU name fragment and precision (vendor datasheets, SXM parts).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "float32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "float32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "float32": 19.5},
}


#: CPU flags (Linux /proc/cpuinfo) of native bf16 matrix products: AMX tiles or AVX-512 BF16.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether ``train.precision: bf16`` computes natively on ``device`` (README, "Bigger
    machines"): on CUDA, ``torch.cuda.is_bf16_supported`` without emulation; on a CPU, one of
    :data:`BF16_CPU_FLAGS` among the flags of ``cpuinfo``; None where that file cannot be read
    (not Linux). Without it, bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


class _ScalarReads(TorchDispatchMode):
    """Counts ``.item()``, ``bool()`` and ``float()`` of tensors (aten ``_local_scalar_dense``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class _ListReads(TorchFunctionMode):
    """Counts ``.tolist()`` of tensors, which on the CPU dispatches no operator."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.Tensor.tolist
        return func(*args, **(kwargs or {}))


@dataclass
class HostReads:
    """Reads of tensor values by Python in a scope: on CUDA each one waits for the GPU."""

    scalars: _ScalarReads
    lists: _ListReads

    @property
    def count(self) -> int:
        return self.scalars.count + self.lists.count


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count every ``.item()``, ``bool()``, ``float()`` and ``.tolist()`` of a tensor in scope."""
    reads = HostReads(_ScalarReads(), _ListReads())
    with reads.lists, reads.scalars:
        yield reads


@dataclass
class BenchResult:
    device: str
    threads: int
    n_params: int
    train_images_per_s: float
    sample_images_per_s: float
    eval_images_per_s: float
    peak_memory_mb: float
    train_tflops: float | None = None
    peak_tflops: float | None = None
    train_rates: list[float] = field(default_factory=list)
    monitor_fraction: float | None = None
    arithmetic: str = "float32"
    host_reads_per_step: int | None = None
    native_bf16: bool | None = None

    @property
    def fraction_of_peak(self) -> float | None:
        if self.train_tflops is None or not self.peak_tflops:
            return None
        return self.train_tflops / self.peak_tflops


def arithmetic(config: RunConfig, device: torch.device) -> str:
    """What the step's convolutions and matrix products compute in: bf16 (autocast), TF32
    (CUDA with ``train.tf32``) or IEEE float32 (:func:`glow_repro.run.engine.numerics`)."""
    if config.train.precision == "bf16":
        return "bf16"
    return "tf32" if config.train.tf32 and device.type == "cuda" else "float32"


def _peak_tflops(device: torch.device, config: RunConfig) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[arithmetic(config, device)] for key, peaks in PEAK_TFLOPS.items() if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    config: RunConfig, device: torch.device, *, steps: int = 10, repeats: int = 5, monitor: bool = False
) -> BenchResult:
    """Median images/s of the engine's training steps without the stability monitor (forward
    + bpd + backward + clip + finiteness checks + optimiser + EMA), of sampling passes and of
    test-bpd evaluation (one ``train.eval_batch_size`` batch) with the config's speed options;
    optionally the stability monitor's own seconds per step as a fraction of the step. Peak
    memory covers all three. Steps and evaluation are the run's objective's
    (:mod:`glow_repro.core.objectives`), so a class-conditional config is timed as it trains and
    evaluates: steps on labelled batches (its ``--ycond`` objective), evaluation of bpd given
    the label, marginal bpd and accuracy."""
    cfg = config.train
    with numerics(cfg):
        engine = Engine(config, device, seed=0)
        model, shape = engine.model, config.data.shape
        images = torch.randint(0, 256, (cfg.batch_size, *shape), dtype=torch.uint8)
        x = engine.to_device(preprocess(images, config.data.n_bits))
        y = model.sample_labels(cfg.batch_size, None)  # uniform classes of a class-conditional model
        engine.initialise(x)
        engine.wrap()

        def step() -> None:
            engine.step(x, cfg.lr, y=y)

        for _ in range(3):
            step()
        with FlopCounterMode(display=False) as counter, count_host_reads() as reads:
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        watcher = StabilityMonitor(config.monitor, model, "bench")
        eval_images = torch.randint(0, 256, (cfg.eval_batch_size, *shape), dtype=torch.uint8)
        eval_labels = model.sample_labels(cfg.eval_batch_size, None)  # uniform classes, as for the steps
        eval_data = EvalSet(eval_images, eval_labels, cfg.eval_batch_size, device)

        def evaluate() -> None:  # syncs (.item())
            engine.objective.eval_sums(model, eval_data)

        train_rates, sample_rates, eval_rates, monitor_costs = [], [], [], []
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            train_rates.append(steps * cfg.batch_size / (time.perf_counter() - started))
            if monitor:
                monitor_costs.append(_monitor_seconds(watcher, step))
            started = time.perf_counter()
            model.sample(cfg.batch_size, temperature=0.7)
            _sync(device)
            sample_rates.append(cfg.batch_size / (time.perf_counter() - started))
            started = time.perf_counter()
            evaluate()
            eval_rates.append(cfg.eval_batch_size / (time.perf_counter() - started))
        rate = statistics.median(train_rates)
        step_seconds = cfg.batch_size / rate
        return BenchResult(
            device=str(device),
            threads=torch.get_num_threads(),
            n_params=model.n_params(),
            train_images_per_s=rate,
            sample_images_per_s=statistics.median(sample_rates),
            eval_images_per_s=statistics.median(eval_rates),
            peak_memory_mb=_peak_memory_mb(device),
            train_tflops=counter.get_total_flops() / step_seconds / 1e12 if device.type == "cuda" else None,
            peak_tflops=_peak_tflops(device, config),
            train_rates=train_rates,
            monitor_fraction=statistics.median(monitor_costs) / step_seconds if monitor else None,
            arithmetic=arithmetic(config, device),
            host_reads_per_step=reads.count,
            native_bf16=native_bf16(device),
        )


def _monitor_seconds(watcher: StabilityMonitor, step) -> float:
    """The monitor's own seconds per step as train() runs it: per-step checks on every step,
    the health check once every ``health_every`` steps."""
    every = max(watcher.config.health_every, 1)
    spent = 0.0
    for index in range(1, every + 1):
        watcher.record_health(watcher.health_due(index))
        step()
        started = time.perf_counter()
        watcher.parameters_finite()
        watcher.observe(index, 3.0, 1.0, 1e-3)
        spent += time.perf_counter() - started
    watcher.record_health(False)  # leave the timed bare steps without health recording
    return spent / every


def train_loop_rates(config: RunConfig, steps: int, repeats: int) -> list[float]:
    """images/s of ``train()``'s loop from its own step log (data, logging, monitor and
    checkpoints every 25 steps included; the step-0 and final evaluations excluded)."""
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config.model_copy(
                update={
                    "train": config.train.model_copy(
                        update={
                            "steps": steps + 1,
                            "eval_every": 10_000,
                            "eval_limit": 64,
                            "checkpoint_every": 25,
                            "n_samples": 2,
                        }
                    )
                }
            )
            train(cfg, f"{tmp}/run")
            rows = RunDir(f"{tmp}/run").metrics.read()
            seconds = rows[-1]["wall_time"] - rows[0]["wall_time"]
            rates.append(steps * cfg.train.batch_size / seconds)
    return rates
