"""The Python stages of ``benchmarks/gpu_check.sh``; each prints one JSON line per result.

    python benchmarks/gpu_check.py --device cuda options             # the speed options, eager
    python benchmarks/gpu_check.py --device cuda options --compile   # the torch.compile modes
    python benchmarks/gpu_check.py --device cuda precision resume ddp

``options`` measures the engine's step (:func:`glow_repro.run.benchmark.measure`: images/s, peak
memory, TFLOP/s, host reads per step) at the paper's CIFAR-10 config; ``precision`` trains
it in float32 and in bf16 with ``train()``; ``resume`` compares half a run, resumed, with one
go; ``ddp`` steps through DDP over a one-process group. On ``--device cpu`` every stage uses
a tiny model, so the script is tested on the CPU before it meets a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from glow_repro.core.config import RunConfig, dump_run_config, read_yaml, set_path
from glow_repro.run.benchmark import measure
from glow_repro.run.distributed import DistContext
from glow_repro.run.rundir import RunDir
from glow_repro.run.train import train

#: The paper studies' model (configs/paper_cifar10.yaml); each stage sets its own budget.
PAPER_CIFAR10 = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "paper_cifar10.yaml")
PAPER_CIFAR10["train"] = {**PAPER_CIFAR10["train"], "epochs": None, "steps": 1000}
SYNTHETIC_RGB = {"dataset": "synthetic", "image_size": 32, "channels": 3, "synthetic_size": 1024}
TINY = {
    "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 128},
    "model": {"depth": 1, "levels": 2, "width": 8},
    "train": {
        "batch_size": 16,
        "progress": False,
        "n_samples": 1,
        "eval_limit": 32,
        "eval_batch_size": 32,
        "sample_temperatures": [1.0],
    },
}
SMALL = {
    "data": SYNTHETIC_RGB,
    "model": {"depth": 4, "levels": 3, "width": 128},
    "train": {"batch_size": 64, "progress": False, "n_samples": 2, "eval_limit": 512},
}


def base(device: str, gpu: dict) -> dict:
    raw = json.loads(json.dumps(gpu if device == "cuda" else TINY))
    return set_path(raw, "train.device", device)


def run_config(raw: dict, **train_options) -> RunConfig:
    for key, value in train_options.items():
        raw = set_path(raw, f"train.{key}", value)
    return RunConfig.model_validate(raw)


def records(run_dir: Path) -> tuple[list[float], dict[int, float]]:
    """Train bpd of every step, and test bpd by step."""
    run = RunDir(run_dir)
    return [r["train_bpd"] for r in run.metrics.read()], {e["step"]: e["test_bpd"] for e in run.evals.read()}


def largest_gap(a: list[float] | dict[int, float], b: list[float] | dict[int, float]) -> float:
    """The largest difference of two runs' values (of the steps both evaluated, for dicts)."""
    if isinstance(a, dict):
        a, b = [a[k] for k in sorted(a.keys() & b.keys())], [b[k] for k in sorted(a.keys() & b.keys())]
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


#: The paper's CIFAR-10 model on random data, and an option set on top of it each.
EAGER = {
    "float32": {"train.tf32": False},
    "tf32": {"train.tf32": True},
    "bf16": {"train.precision": "bf16"},
    "float32-nchw": {"train.channels_last": False},
    "bf16-nchw": {"train.precision": "bf16", "train.channels_last": False},
    "bf16-grad-checkpointing": {"train.precision": "bf16", "train.grad_checkpointing": True},
    "bf16-batch-256": {"train.precision": "bf16", "train.batch_size": 256},
}
COMPILED = {
    f"bf16-compile-{mode}": {"train.precision": "bf16", "train.compile": mode}
    for mode in ("default", "reduce-overhead", "max-autotune")
}


def options(device: str, compiled: bool) -> list[dict]:
    """One :func:`measure` per option (or per compile mode), a failure reported as its error."""
    raw = base(device, PAPER_CIFAR10)
    steps, repeats = (10, 3) if device == "cuda" else (2, 1)
    results = []
    for name, overrides in (COMPILED if compiled else EAGER).items():
        if device == "cpu" and ("256" in name or name in list(COMPILED)[1:]):
            continue  # the CPU check stays short: no large batch, one compile mode
        cfg = raw
        for key, value in overrides.items():
            cfg = set_path(cfg, key, value)
        started = time.perf_counter()
        record: dict = {"stage": "options", "option": name}
        try:
            torch._dynamo.reset()
            result = measure(RunConfig.model_validate(cfg), torch.device(device), steps=steps, repeats=repeats)
            record.update(
                images_per_s=round(result.train_images_per_s, 1),
                arithmetic=result.arithmetic,
                peak_memory_mb=round(result.peak_memory_mb),
                tflops=result.train_tflops,
                fraction_of_peak=result.fraction_of_peak,
                host_reads_per_step=result.host_reads_per_step,
                graph_breaks=sum(torch._dynamo.utils.counters["graph_break"].values()),
            )
        except Exception as err:  # one option's failure is a finding, not the end of the check
            record["error"] = f"{type(err).__name__}: {err}"[:500]
            traceback.print_exc()
        record["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(record), flush=True)
        results.append(record)
    return results


def precision(device: str) -> dict:
    """The same run in float32 (TF32 off) and in bf16: per-step train and test bpd gaps
    (the scale-option tests allow 0.02) and train()'s own images/s."""
    paper = {**PAPER_CIFAR10, "data": SYNTHETIC_RGB}
    raw = base(device, {**paper, "train": {**PAPER_CIFAR10["train"], "eval_limit": 512, "n_samples": 2}})
    steps = 40 if device == "cuda" else 6
    out: dict = {"stage": "precision", "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("float32", "bf16"):
            cfg = run_config(raw, steps=steps, eval_every=steps // 2, checkpoint_every=steps, precision=name)
            summary = train(cfg, f"{tmp}/{name}")
            out[f"{name}_images_per_s"] = summary["images_per_s"]
            out[f"{name}_final_test_bpd"] = summary["final_test_bpd"]
        (train_a, test_a), (train_b, test_b) = records(Path(tmp, "float32")), records(Path(tmp, "bf16"))
    out.update(max_train_bpd_gap=largest_gap(train_a, train_b), max_test_bpd_gap=largest_gap(test_a, test_b))
    return out


def resume(device: str) -> dict:
    """Half a run, then the same command again, against one uninterrupted run; with
    ``train.deterministic`` both ways. Exact means every step's train bpd and the final test
    bpd are equal."""
    raw = base(device, SMALL)
    steps = 30 if device == "cuda" else 8
    out: dict = {"stage": "resume", "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for deterministic in (True, False):
            whole = run_config(
                raw, steps=steps, eval_every=steps, checkpoint_every=steps // 2, deterministic=deterministic
            )
            half = run_config(
                raw, steps=steps // 2, eval_every=steps, checkpoint_every=steps // 2, deterministic=deterministic
            )
            split = Path(tmp, f"split_{deterministic}")
            train(half, split)
            (split / "config.yaml").write_text(dump_run_config(whole))  # the same run, a longer budget
            train(whole, split)
            train(whole, Path(tmp, f"whole_{deterministic}"))
            (train_a, test_a), (train_b, test_b) = records(split), records(Path(tmp, f"whole_{deterministic}"))
            key = "deterministic" if deterministic else "default"
            out[f"{key}_exact"] = train_a == train_b and test_a[steps] == test_b[steps]
            out[f"{key}_max_train_bpd_gap"] = largest_gap(train_a, train_b)
    return out


@dataclass(frozen=True)
class _OneRankGroup(DistContext):
    """A process group of one rank that still takes the data-parallel path: DDP's wrapper
    and the all-reduce of the bpd run on the device (NCCL on CUDA, gloo on the CPU)."""

    @property
    def enabled(self) -> bool:
        return True


def ddp(device: str) -> dict:
    """Steps through DDP over a one-rank group against the same steps without it."""
    from glow_repro.core.objective import preprocess
    from glow_repro.run.engine import Engine, numerics

    torch_device = torch.device(device)
    if device == "cuda":
        torch.cuda.set_device(0)
        torch_device = torch.device("cuda", 0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    backend = "nccl" if device == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=0, world_size=1)
    cfg = run_config(base(device, SMALL))
    images = torch.randint(0, 256, (cfg.train.batch_size, *cfg.data.shape), dtype=torch.uint8)
    losses = {}
    try:
        with numerics(cfg.train):
            for name, group in (("plain", DistContext()), ("ddp", _OneRankGroup())):
                engine = Engine(cfg, torch_device, group)
                x = engine.to_device(preprocess(images, cfg.data.n_bits))
                engine.initialise(x)
                engine.wrap()
                started = time.perf_counter()
                losses[name] = [engine.step(x, 1e-3).loss for _ in range(5)]
                losses[f"{name}_seconds"] = time.perf_counter() - started
    finally:
        torch.distributed.destroy_process_group()
    return {
        "stage": "ddp",
        "backend": backend,
        "ddp_losses": losses["ddp"],
        "plain_losses": losses["plain"],
        "max_loss_gap": largest_gap(losses["ddp"], losses["plain"]),
        "ddp_seconds": losses["ddp_seconds"],
        "plain_seconds": losses["plain_seconds"],
    }


STAGES = {"precision": precision, "resume": resume, "ddp": ddp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", choices=["options", *STAGES])
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--compile", action="store_true", help="options: the torch.compile modes")
    args = parser.parse_args()
    for stage in args.stages:
        if stage == "options":
            options(args.device, args.compile)
            continue
        try:
            print(json.dumps(STAGES[stage](args.device)), flush=True)
        except Exception as err:
            traceback.print_exc()
            print(json.dumps({"stage": stage, "error": f"{type(err).__name__}: {err}"[:500]}), flush=True)


if __name__ == "__main__":
    main()
