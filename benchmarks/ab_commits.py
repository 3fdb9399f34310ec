"""Before/after throughput of two commits, measured in alternating processes (benchmarks/README.md).

This host's throughput drifts by about 15 % within minutes, so two benchmark runs taken at
different times do not compare. This script checks out both revisions into temporary git
worktrees and runs ``benchmarks/bench_step.py`` of each, alternately (A B B A A B ...), in
fresh processes, then prints the median images/s of each and the median of the paired ratios.
Process-level settings (the allocator) are compared fairly this way, which one process cannot do.
With ``--study FILE`` it times ``glow-repro run FILE`` of each instead (into a fresh results
directory every time), to compare what a study costs end to end: start-up, evaluations and all.

    python benchmarks/ab_commits.py BEFORE AFTER [--pairs 5] [--bench-args "--repeats 5"]
    python benchmarks/ab_commits.py BEFORE AFTER --study studies/smoke.yaml [--run-args "--workers 2"]

A revision is anything ``git worktree add`` accepts; ``WORKTREE`` means the working tree as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(revision: str, into: Path) -> Path:
    if revision == "WORKTREE":
        return REPO
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), revision], check=True, capture_output=True
    )
    return into


def bench(tree: Path, bench_args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / "bench_step.py"), *bench_args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out[out.index("{") :])


def study_seconds(tree: Path, study: Path, run_args: list[str], results: Path) -> float:
    """Wall seconds of ``glow-repro run`` of ``study`` with the code of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "glow_repro", "run", str(study), "--results", str(results), *run_args]
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--bench-args", default="--repeats 5", help="passed to bench_step.py")
    parser.add_argument("--study", type=Path, help="time `glow-repro run STUDY` instead of bench_step.py")
    parser.add_argument("--run-args", default="", help="passed to `glow-repro run` with --study")
    args = parser.parse_args()
    bench_args = shlex.split(args.bench_args)
    run_args = shlex.split(args.run_args)
    study = args.study.resolve() if args.study else None
    unit = "s" if study else "img/s"
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            name: checkout(rev, Path(tmp) / name) for name, rev in (("before", args.before), ("after", args.after))
        }
        try:
            measured: dict[str, list[float]] = {"before": [], "after": []}
            for pair in range(args.pairs):
                order = ("before", "after") if pair % 2 == 0 else ("after", "before")
                for name in order:
                    if study:
                        results = Path(tmp) / f"results-{name}-{pair}"
                        measured[name].append(study_seconds(trees[name], study, run_args, results))
                    else:
                        measured[name].append(bench(trees[name], bench_args)["train_images_per_s_median"])
                print(
                    f"pair {pair + 1}: before {measured['before'][-1]:.1f}  after {measured['after'][-1]:.1f} {unit}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                        check=False,
                        capture_output=True,
                    )
    ratios = [a / b for a, b in zip(measured["after"], measured["before"])]
    measure = "wall_seconds" if study else "images_per_s"
    print(
        json.dumps(
            {
                "before": args.before,
                "after": args.after,
                "pairs": args.pairs,
                **({"study": str(args.study), "run_args": run_args} if study else {"bench_args": bench_args}),
                f"before_{measure}_median": round(statistics.median(measured["before"]), 1),
                f"after_{measure}_median": round(statistics.median(measured["after"]), 1),
                "paired_ratio_median": round(statistics.median(ratios), 3),
                "paired_ratios": [round(r, 3) for r in ratios],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
