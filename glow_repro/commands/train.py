"""``glow-repro train CONFIG --out DIR``: one run, resumable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from glow_repro.commands.base import user_errors


def _print_summary(summary: dict, out: Path) -> None:
    fields = [f"state={summary['state']}", f"step={summary['step']}"]
    for key in ("initial_test_bpd", "final_test_bpd", "best_test_bpd"):
        if summary.get(key) is not None:
            fields.append(f"{key}={summary[key]:.4f}")
    fields.append(f"wall_time={summary['wall_time']:.1f}s")
    click.echo(f"{out}: " + " ".join(fields))


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory; an existing one with a checkpoint is resumed.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config key, e.g. --set train.lr=5e-4 (repeatable).",
)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (does not change the run id).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also write TensorBoard event files under DIR/tensorboard (needs the tensorboard extra).",
)
@user_errors
def train_command(
    config_path: Path, out: Path, overrides: tuple[str, ...], threads: int | None, quiet: bool, tensorboard: bool
) -> None:
    """Train one Glow run from CONFIG.yaml into --out (resumes if interrupted)."""
    from glow_repro.core.config import load_run_config
    from glow_repro.run.hooks import RunInterrupted
    from glow_repro.run.train import train

    config = load_run_config(config_path, (*overrides, "train.tensorboard=true") if tensorboard else overrides)
    try:
        summary = train(config, out, threads=threads, progress=False if quiet else None)
    except RunInterrupted as err:
        click.echo(f"{err}; run the same command again to resume", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
        _print_summary(summary, out)
