"""Power pilot: the paired spread of a pair of variants per CPU-minute, for each setting and
estimator (docs/pilot.md).

Reads a pilot's results directory (e.g. ``benchmarks/pilot/permutation_pilot.yaml``, run with
``glow-repro run``): runs that share a seed and a setting (their other swept keys) and differ in
one swept key form a pair. For each setting, at each evaluated step asked for, and for each
estimator, it prints the paired differences' mean and SD over seeds, the CPU-minutes a run
took to get there, and what that buys: the seeds and CPU-minutes one pair needs to detect a
fixed effect ``--delta`` at 80 % power (paired t, two-sided, at ``--alpha``).

Estimators (Glow's official code evaluated Polyak-averaged weights):
- ``ema_last``: the run's evaluation at the step (EMA weights, the eval_limit images);
- ``ema_mean3``: the mean of its last three evaluations up to the step;
- ``ema_full`` / ``raw_full`` / ``raw_last``: evaluated here from the final checkpoint, with
  EMA or raw weights, on the whole test split or on the eval_limit images (final step only).

Every run must have been trained with one thread (``--workers`` equal to the cores), so a
run's wall time is its CPU time; evaluating here is timed the same way.

    python benchmarks/pilot_power.py results/pilot_permutation --steps 400 800
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from glow_repro.analysis.pair_tests import seeds_needed_t
from glow_repro.core.config import load_run_config
from glow_repro.core.data import load_split
from glow_repro.core.evaluation import bpd_sum
from glow_repro.run.engine import build_model
from glow_repro.run.rundir import RunDir, StudyDir
from glow_repro.run.sampling import load_trained_model
from glow_repro.study.tables import load_tables


def _post_hoc(run: RunDir, config, test_images: torch.Tensor) -> dict[str, float]:
    """Final-checkpoint evaluations that the run did not make, with the seconds each took."""
    cfg = config.train
    raw = build_model(config, "cpu")
    raw.load_state_dict(torch.load(run.checkpoint, map_location="cpu", weights_only=True)["model"])
    _, ema = load_trained_model(run.path)
    out = {}
    for name, model, images in (
        ("raw_last", raw, test_images[: cfg.eval_limit]),
        ("raw_full", raw, test_images),
        ("ema_full", ema, test_images),
    ):
        start = time.process_time()
        out[name] = bpd_sum(model, images, config.data.n_bits, cfg.eval_batch_size, torch.device("cpu")) / len(images)
        out[f"{name}_cpu_s"] = time.process_time() - start
    return out


def estimates(results: Path, steps: list[int], pair_key: str) -> pd.DataFrame:
    """One row per (run, step, estimator): the estimate and the CPU-minutes it cost. A run's
    setting is its values of the swept keys other than ``pair_key``."""
    torch.set_num_threads(1)
    tables = load_tables(results)
    others = [key for key in tables.swept if key != pair_key]
    test = None
    rows = []
    for run_id, evals in tables.evals.sort_values("step").groupby("run_id", sort=True):
        first = evals.iloc[0]
        base = {
            "setting": ", ".join(f"{key}={first[key]}" for key in others),
            "value": str(first[pair_key]),
            "seed": int(first["seed"]),
        }
        final = int(evals["step"].max())
        for step in (s for s in steps if s <= final):
            upto = evals[evals["step"] <= step]
            cpu_min = float(upto["wall_time"].iloc[-1]) / 60
            for name, bpd in (("ema_last", upto["test_bpd"].iloc[-1]), ("ema_mean3", upto["test_bpd"].tail(3).mean())):
                rows.append({**base, "step": step, "estimator": name, "bpd": bpd, "cpu_min": cpu_min})
        run = StudyDir(results).run(run_id)
        config = load_run_config(run.config)
        test = load_split(config.data, "test").images if test is None else test
        post = _post_hoc(run, config, test)
        cpu_min = float(evals["wall_time"].iloc[-1]) / 60
        for name in ("raw_last", "raw_full", "ema_full"):
            extra = 0.0 if name == "raw_last" else post[f"{name}_cpu_s"] / 60
            rows.append({**base, "step": final, "estimator": name, "bpd": post[name], "cpu_min": cpu_min + extra})
    return pd.DataFrame(rows)


def pilot_table(rows: pd.DataFrame, worse: str, better: str, delta: float, alpha: float) -> pd.DataFrame:
    """Per (setting, step, estimator): paired d = worse - better over seeds, its mean and SD,
    CPU-minutes per run (the fastest run's: a run slowed by other work on the machine took
    longer in wall time, not more CPU), and the seeds and pair CPU-minutes to detect ``delta``."""
    wide = rows.pivot_table(index=["setting", "step", "estimator", "seed"], columns="value", values=["bpd", "cpu_min"])
    d = (wide["bpd"][worse] - wide["bpd"][better]).rename("d")
    cost = wide["cpu_min"].min(axis=1).rename("cpu_min")
    frame = pd.concat([d, cost], axis=1).reset_index()
    table = frame.groupby(["setting", "step", "estimator"]).agg(
        seeds=("d", "size"), effect=("d", "mean"), sd=("d", "std"), cpu_min_per_run=("cpu_min", "min")
    )
    table["var_x_cpu_min"] = table["sd"] ** 2 * table["cpu_min_per_run"]
    needed = seeds_needed_t(np.full(len(table), delta) / table["sd"].to_numpy(), alpha)
    table["seeds_for_delta"] = needed
    table["pair_cpu_min_for_delta"] = [
        n * 2 * c if math.isfinite(n) else math.inf for n, c in zip(needed, table["cpu_min_per_run"])
    ]
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 800], help="evaluated steps to compare")
    parser.add_argument("--key", default="model.permutation", help="the swept key that forms the pair")
    parser.add_argument("--worse", default="reverse", help="claimed-worse value (d = worse - better)")
    parser.add_argument("--better", default="shuffle", help="claimed-better value")
    parser.add_argument("--delta", type=float, default=0.1, help="effect (bpd) the costs are quoted for")
    parser.add_argument(
        "--alpha", type=float, default=0.05 / 24, help="two-sided level (default: 0.05 over 6 pairs x 4 looks)"
    )
    parser.add_argument("--csv", type=Path, help="also write the table here, and the per-run estimates beside it")
    parser.add_argument(
        "--reuse", action="store_true", help="read the per-run estimates --csv wrote instead of evaluating"
    )
    args = parser.parse_args()
    saved = args.csv.with_name(args.csv.stem + "_runs.csv") if args.csv else None
    if saved is not None and saved.exists() and args.reuse:
        rows = pd.read_csv(saved, dtype={"value": str})
    else:
        rows = estimates(args.results, args.steps, args.key)
    table = pilot_table(rows, args.worse, args.better, args.delta, args.alpha)
    if saved is not None:
        table.to_csv(args.csv, index=False)
        rows.to_csv(saved, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
