"""Runs at once on a CPU: one run with every thread, or single-thread runs side by side?

Trains the same two-run study (Fashion-MNIST at the CPU studies' scale, a short budget) with
``--workers 1`` (one run at a time, all threads) and with ``--workers N`` (N single-thread
runs at once, N = the cores), alternating the two, and prints the study's training images per
second (every run's images over the command's wall time, start-up and evaluations included)
and their ratio. This chose ``--workers auto``'s rule (glow_repro/study/workers.py).

    python benchmarks/bench_workers.py [--repeats 2] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from glow_repro.study.workers import usable_cores

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "example.yaml"


def study(steps: int, runs: int) -> dict:
    return {
        "name": "bench_workers",
        "reference": "none (benchmark)",
        "base": str(EXAMPLE),
        "set": {"train.steps": steps, "train.warmup_steps": 10, "train.eval_every": steps, "train.eval_limit": 500},
        "grid": {"model.coupling": ["affine"]},
        "seeds": list(range(runs)),
    }


def timed_run(spec: Path, results: Path, workers: int) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "glow_repro", "run", str(spec), "--results", str(results)]
    subprocess.run([*command, "--workers", str(workers)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="alternating pairs of study runs")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    args = parser.parse_args()
    cores = usable_cores()
    spec = study(args.steps, runs=cores)
    images = cores * args.steps * 64
    rates: dict[str, list[float]] = {"1 x all threads": [], f"{cores} x 1 thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(spec))
        for repeat in range(args.repeats):
            for label, workers in (("1 x all threads", 1), (f"{cores} x 1 thread", cores)):
                seconds = timed_run(path, Path(tmp) / f"results-{workers}-{repeat}", workers)
                rates[label].append(images / seconds)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    print(json.dumps({
        "cores": cores, "runs": cores, "steps_per_run": args.steps, "repeats": args.repeats,
        "study_images_per_s": {label: [round(r, 1) for r in values] for label, values in rates.items()},
        "median": {label: round(m, 1) for label, m in medians.items()},
        "side_by_side_over_one_at_a_time": round(medians[f"{cores} x 1 thread"] / medians["1 x all threads"], 3),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
