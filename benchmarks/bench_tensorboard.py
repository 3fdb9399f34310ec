"""What TensorBoard mirroring costs a training step (docs/for-researchers.md).

Times blocks of training steps of the reference config with and without mirroring each
step's metrics row into TensorBoard, alternating the two so that drift in the machine's speed
hits both alike, and prints the median seconds per step of each and the overhead.

    python benchmarks/bench_tensorboard.py [--repeats 7] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from glow_repro.core.config import load_run_config
from glow_repro.core.objective import preprocess
from glow_repro.run.engine import Engine
from glow_repro.run.tensorboard_log import TensorBoardMirror

REFERENCE = Path(__file__).with_name("reference.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating pairs of timed blocks")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_run_config(REFERENCE)
    engine = Engine(config, torch.device("cpu"), seed=0)
    images = torch.randint(0, 256, (config.train.batch_size, *config.data.shape), dtype=torch.uint8)
    x = engine.to_device(preprocess(images, config.data.n_bits))
    engine.initialise(x)
    engine.wrap()
    step = 0

    def block(mirror: TensorBoardMirror | None) -> float:
        nonlocal step
        started = time.perf_counter()
        for _ in range(args.steps):
            step += 1
            result = engine.step(x, config.train.lr)
            row = {"step": step, "train_bpd": result.loss, "lr": config.train.lr, "grad_norm": result.grad_norm,
                   "images_per_s": 1000.0}  # fmt: skip
            if mirror is not None:
                mirror.rows("metrics", [row])
        return (time.perf_counter() - started) / args.steps

    with tempfile.TemporaryDirectory() as tmp:
        mirror = TensorBoardMirror(Path(tmp))
        block(None), block(mirror)  # warm-up
        plain, mirrored = [], []
        for _ in range(args.repeats):
            plain.append(block(None))
            mirrored.append(block(mirror))
        mirror.close()
    record = {
        "threads": args.threads, "repeats": args.repeats, "steps_per_block": args.steps,
        "seconds_per_step_plain_median": statistics.median(plain),
        "seconds_per_step_tensorboard_median": statistics.median(mirrored),
        "overhead_of_median": statistics.median(mirrored) / statistics.median(plain) - 1,
        "overhead_per_pair_median": statistics.median(m / p - 1 for p, m in zip(plain, mirrored)),
    }  # fmt: skip
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
