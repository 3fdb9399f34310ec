"""Reference-config benchmark for before/after speed claims (benchmarks/README.md).

Prints the median images/s of a bare training step, a sampling pass and an evaluation batch
on the reference config (``benchmarks/reference.yaml``: 1x32x32, K=8, L=3, width 128, affine,
LU 1x1, learned top prior, batch 32), peak RSS, the parameter count, the stability monitor's
share of a step and, with ``--train-loop``, the throughput of ``train()``'s own loop and its
overhead over the bare step.

    python benchmarks/bench_step.py [--repeats 5] [--steps 10] [--threads 2] [--train-loop]
    python benchmarks/bench_step.py --set train.channels_last=false   # a speed option off
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from glow_repro.core.config import load_run_config
from glow_repro.run.benchmark import measure, train_loop_rates

REFERENCE = Path(__file__).with_name("reference.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--train-loop", action="store_true", help="also time train()'s loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_run_config(REFERENCE, args.overrides)
    result = measure(config, torch.device("cpu"), steps=args.steps, repeats=args.repeats, monitor=True)
    record = {
        "threads": args.threads,
        "repeats": args.repeats,
        "overrides": args.overrides,
        "train_images_per_s_median": result.train_images_per_s,
        "train_images_per_s_all": [round(r, 1) for r in result.train_rates],
        "sample_images_per_s_median": result.sample_images_per_s,
        "eval_images_per_s_median": result.eval_images_per_s,
        "monitor_fraction_of_step": result.monitor_fraction,
        "n_params": result.n_params,
        "peak_rss_mb": result.peak_memory_mb,
    }
    if args.train_loop:
        loop = statistics.median(train_loop_rates(config, 100, args.repeats))
        record["train_loop_images_per_s_median"] = loop
        record["train_loop_overhead"] = 1 - loop / result.train_images_per_s
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
