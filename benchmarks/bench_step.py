"""Training-step and sampling throughput on the reference config (issues #2, #3).

Reference config: 1x32x32 inputs, K=8, L=3, width 128, affine coupling, LU 1x1 conv, learned
top prior, batch 32, 2 threads. Prints the median images/s of a bare training step (forward +
bpd + backward + Adam), of one sampling pass, the peak RSS and the parameter count; with
``--train-loop`` also the throughput of the same steps driven by ``train()`` (data, logging,
checkpoints included) and its overhead against the bare step.

    python benchmarks/bench_step.py [--repeats 5] [--steps 10] [--train-loop]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time

import torch

from glow_repro.config import RunConfig
from glow_repro.model import Glow
from glow_repro.objective import bits_per_dim, preprocess
from glow_repro.stability import StabilityMonitor

REFERENCE = {
    "data": {"dataset": "synthetic", "image_size": 32, "synthetic_size": 1024},
    "model": {"depth": 8, "levels": 3, "width": 128, "coupling": "affine", "permutation": "conv1x1",
              "conv1x1_form": "lu", "learn_top": True},
    "train": {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "progress": False},
}


def reference_config(**train: object) -> RunConfig:
    raw = {key: dict(value) for key, value in REFERENCE.items()}
    raw["train"].update(train)
    return RunConfig.model_validate(raw)


def bare_step_rates(config: RunConfig, steps: int, repeats: int) -> tuple[list[float], list[float], list[float], int]:
    """images/s of bare training steps and of sampling passes, and the seconds per step that
    the stability monitor adds (its per-step checks plus a health check every
    ``monitor.health_every`` steps), ``repeats`` times each."""
    torch.manual_seed(0)
    shape = config.data.shape
    batch = config.train.batch_size
    model = Glow(config.model, shape)
    images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model(preprocess(images, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_dims = math.prod(shape)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = bits_per_dim(model(preprocess(images, 8)), n_dims, 8).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf, foreach=True)
        optimizer.step()

    monitor = StabilityMonitor(config.monitor, model, "bench")

    def monitored_step(index: int) -> float:
        """Run one step with the monitor as train() does; return the monitor's own seconds."""
        health = monitor.health_due(index)
        monitor.record_scales(health)
        step()
        started = time.perf_counter()
        monitor.parameters_finite()
        monitor.observe(index, 3.0, 1.0, 1e-3)
        return time.perf_counter() - started

    for _ in range(3):
        step()
    train_rates, sample_rates, monitor_costs = [], [], []
    every = max(config.monitor.health_every, 1)
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        train_rates.append(steps * batch / (time.perf_counter() - started))
        monitor_costs.append(sum(monitored_step(i) for i in range(1, every + 1)) / every)
        started = time.perf_counter()
        model.sample(batch, temperature=0.7)
        sample_rates.append(batch / (time.perf_counter() - started))
    return train_rates, sample_rates, monitor_costs, model.n_params()


def train_loop_rates(config: RunConfig, steps: int, repeats: int) -> list[float]:
    """images/s of ``train()``'s loop, from its own step log (first to last logged step)."""
    from glow_repro.study.store import RunDir
    from glow_repro.train import train

    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config.model_copy(update={"train": config.train.model_copy(update={
                "steps": steps + 1, "eval_every": 10_000, "eval_limit": 64, "checkpoint_every": 25,
                "n_samples": 2})})
            train(cfg, f"{tmp}/run")
            rows = RunDir(f"{tmp}/run").metrics.read()
            seconds = rows[-1]["wall_time"] - rows[0]["wall_time"]
            rates.append(steps * cfg.train.batch_size / seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-loop", action="store_true", help="also time train()'s loop")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = reference_config()
    train_rates, sample_rates, monitor_costs, n_params = bare_step_rates(config, args.steps, args.repeats)
    step_seconds = config.train.batch_size / statistics.median(train_rates)
    result = {
        "threads": args.threads,
        "repeats": args.repeats,
        "train_images_per_s_median": statistics.median(train_rates),
        "train_images_per_s_all": [round(r, 1) for r in train_rates],
        "sample_images_per_s_median": statistics.median(sample_rates),
        "monitor_fraction_of_step": statistics.median(monitor_costs) / step_seconds,
        "n_params": n_params,
    }
    if args.train_loop:
        loop = train_loop_rates(config, 100, args.repeats)
        result["train_loop_images_per_s_median"] = statistics.median(loop)
        result["train_loop_overhead"] = 1 - statistics.median(loop) / result["train_images_per_s_median"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:34s} {value:.3f}" if isinstance(value, float) else f"{key:34s} {value}")


if __name__ == "__main__":
    main()
