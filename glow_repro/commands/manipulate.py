"""``glow-repro manipulate RUN_DIR --attribute NAME``: move test images along an attribute's
direction in latent space (Glow, section 5.3)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from glow_repro.commands.base import UserError, device_option, out_dir_option, pictures_written, user_errors


def _alphas(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        alphas = tuple(float(part) for part in value.split(","))
    except ValueError:
        alphas = ()
    if not alphas or not all(math.isfinite(alpha) for alpha in alphas):
        raise UserError(f"--alphas: expected finite numbers separated by commas, e.g. -1,-0.5,0,0.5,1 (got {value!r})")
    return alphas


@click.command("manipulate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--attribute",
    required=True,
    help="a CelebA attribute (Smiling), or for a class dataset a class (7, Sneaker) against the "
    "rest, or two classes as A-vs-B (7-vs-1)",
)
@click.option(
    "--alphas",
    callback=_alphas,
    help="steps along the direction, comma-separated; 0 is the reconstruction [default: -1,-0.5,0,0.5,1]",
)
@click.option(
    "--images",
    "rows",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="test images to manipulate, one row each",
)
@click.option(
    "--encode",
    type=click.IntRange(min=2),
    help="training images the direction is the mean difference over, and held-out test images "
    "its separation is measured on [default: all]",
)
@out_dir_option
@device_option
@user_errors
def manipulate_command(
    run_dir: Path,
    attribute: str,
    alphas: tuple[float, ...] | None,
    rows: int,
    encode: int | None,
    out_dir: Path | None,
    device: str,
) -> None:
    """Write the figure manipulate_<attribute>.figure.png (rows: test images; columns: the
    original, then one per alpha, labelled), its native-resolution grid manipulate_<attribute>.png
    (the alpha columns) and its record: the direction's norm and how well it separates held-out
    images with and without the attribute. Works on unconditional and class-conditional runs alike."""
    from glow_repro.core.data import load_split
    from glow_repro.run.manipulation import DEFAULT_ALPHAS, write_manipulation
    from glow_repro.run.rundir import RunDir
    from glow_repro.run.runinfo import resolve_device
    from glow_repro.run.sampling import load_trained_model

    config, model = load_trained_model(run_dir, resolve_device(device, "--device"))
    out = out_dir or RunDir(run_dir).samples
    record = write_manipulation(
        model,
        config,
        out,
        load_split(config.data, "train"),
        load_split(config.data, "test"),
        attribute,
        alphas=alphas or DEFAULT_ALPHAS,
        rows=rows,
        encode=encode,
    )
    held = record["held_out"]
    click.echo(pictures_written(record["files"], out))
    click.echo(
        f"direction norm {record['direction_norm']:.4g} from {record['train_images']['positive']} "
        f"positive and {record['train_images']['negative']} negative training images"
    )
    click.echo(
        f"held-out projection: positives {held['mean_positive']:.4g}, negatives "
        f"{held['mean_negative']:.4g} (gap {held['gap_in_sd']:.2f} pooled sd)"
    )
