"""``glow-repro replay CAPSULE``: reproduce a recorded non-finite step (README, "When training goes wrong")."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from glow_repro.commands.base import user_errors
from glow_repro.errors import UserFacingError


@click.command("replay")
@click.argument("capsule", type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def replay_command(capsule: Path) -> None:
    """Re-run the batch saved in CAPSULE (runs/<id>/capsules/step_*.pt) and name the first
    layer whose forward output or gradient became non-finite. Exit 1 if it differs from the
    layer recorded during training."""
    from glow_repro.run.forensics import replay_capsule

    if not capsule.is_file():
        raise UserFacingError(f"{capsule}: no such capsule (look in <run>/capsules/)")
    step, recorded, replayed = replay_capsule(capsule)
    click.echo(f"step {step}: recorded {recorded.describe()}")
    click.echo(f"step {step}: replayed {replayed.describe()}")
    if replayed != recorded:
        click.echo("replay differs from the recording", err=True)
        sys.exit(1)
