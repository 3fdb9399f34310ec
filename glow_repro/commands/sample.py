"""``glow-repro sample RUN_DIR``: sample grids, reconstructions and latent interpolations of a
trained run (Glow, sections 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import click

from glow_repro.commands.base import device_option, pictures_written, user_errors


@click.command("sample")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-t",
    "--temperature",
    "temperatures",
    multiple=True,
    type=click.FloatRange(min=0),
    help="sampling temperature, repeatable; each gets samples_T<t>.png "
    "[default: the run's train.sample_temperatures, as temperatures.png]",
)
@click.option(
    "-n",
    "n",
    type=click.IntRange(min=1),
    help="samples per temperature and images reconstructed [default: train.n_samples]",
)
@click.option(
    "--class",
    "classes",
    multiple=True,
    help="a class of a class-conditional run, by index or name (7, Sneaker), repeatable; each gets "
    "samples_T<t>_class<k>_<name>.png at each temperature",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="output folder [default: RUN_DIR/samples, or RUN_DIR/samples/custom when --seed, -n or -t would "
    "change the grids training wrote there]",
)
@click.option("--seed", type=click.IntRange(min=0), help="sampling and pair-drawing seed [default: the run's seed]")
@click.option(
    "--interpolations",
    "pairs",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="pairs of test images to interpolate between, one row each",
)
@click.option(
    "--steps",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="images per interpolation row, both ends included",
)
@device_option
@user_errors
def sample_command(
    run_dir: Path,
    temperatures: tuple[float, ...],
    n: int | None,
    classes: tuple[str, ...],
    out_dir: Path | None,
    seed: int | None,
    pairs: int,
    steps: int,
    device: str,
) -> None:
    """Write samples, reconstructions and latent interpolations of the run in RUN_DIR.

    Each picture is a labelled figure <name>.figure.png with its native-resolution grid
    <name>.png beside it (the exact pixels; docs/images.md). RUN_DIR is one run, e.g.
    results/permutation_ablation/runs/<run id>; the model uses the run's latest checkpoint (its
    EMA weights when the run kept them).
    """
    from glow_repro.core.data import load_split
    from glow_repro.run.rundir import RunDir
    from glow_repro.run.runinfo import resolve_device
    from glow_repro.run.sampling import load_trained_model, resolve_classes, write_samples

    config, model = load_trained_model(run_dir, resolve_device(device, "--device"))
    labels = resolve_classes(classes, config, model)
    train = config.train
    asked = (config.seed if seed is None else seed, n or train.n_samples, temperatures or train.sample_temperatures)
    out = out_dir or RunDir(run_dir).samples
    if out_dir is None and asked != (config.seed, train.n_samples, train.sample_temperatures):
        out = out / "custom"  # keep the grids training wrote, which its samples.json describes
    about = {"run_dir": str(run_dir), "run_status": RunDir(run_dir).status()}
    record = write_samples(
        model,
        config,
        out,
        load_split(config.data, "test").images,
        temperatures=temperatures or None,
        n=n,
        seed=seed,
        pairs=pairs,
        steps=steps,
        about=about,
        classes=labels,
    )
    click.echo(pictures_written(record["files"], out))
    click.echo(f"reconstruction max abs error: {record['reconstruction_max_abs_error']:.3g} (model space)")
    if record["nonfinite_samples"]:
        click.echo(f"warning: {record['nonfinite_samples']} samples have non-finite pixels", err=True)
