"""``glow-repro bench``: size a study before launching it (benchmarks/README.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from glow_repro.commands.base import user_errors

#: ``--preset`` names -> run config files of the source checkout (benchmarks/README.md).
PRESETS = {"reference": "benchmarks/reference.yaml", "paper-cifar10": "configs/paper_cifar10.yaml"}
REPOSITORY = Path(__file__).resolve().parents[2]


@click.command("bench")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run config to measure (default: the --preset).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="reference",
    show_default=True,
    help="reference (benchmarks/reference.yaml): 1x32x32 K=8 L=3 width 128 "
    "batch 32; paper-cifar10 (configs/paper_cifar10.yaml): 3x32x32 "
    "K=32 L=3 width 512 batch 64.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config key, e.g. --set train.precision=bf16.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Steps per timed block.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures and the config measured to this JSON file (glow-repro plan --bench reads it).",
)
@user_errors
def bench_command(
    config_path: Path | None,
    preset: str,
    overrides: tuple[str, ...],
    device: str,
    steps: int,
    repeats: int,
    threads: int | None,
    json_path: Path | None,
) -> None:
    """Print training and sampling images/s, peak memory and, on a GPU, achieved TFLOP/s
    against the device's peak, for a run config. Data is random: no dataset is loaded."""
    import torch

    from glow_repro.core.config import load_run_config
    from glow_repro.run.benchmark import measure
    from glow_repro.run.rundir import atomic_write_json
    from glow_repro.run.runinfo import resolve_device

    config = load_run_config(config_path or REPOSITORY / PRESETS[preset], overrides)
    if threads:
        torch.set_num_threads(threads)
    result = measure(config, resolve_device(device, "--device"), steps=steps, repeats=repeats)
    c, h, w = config.data.shape
    m = config.model
    model = (
        f"{c}x{h}x{w}, K={m.depth}, L={m.levels}, width {m.width}, {m.coupling}/{m.permutation}, "
        f"batch {config.train.batch_size}, {result.n_params:,} parameters"
    )
    click.echo(f"model      {model}")
    click.echo(f"device     {result.device} ({result.threads} threads), {result.arithmetic} arithmetic")
    click.echo(f"bf16       {_bf16_text(result.native_bf16, result.device)}")
    click.echo(f"train      {result.train_images_per_s:,.1f} images/s (median of {repeats} x {steps} steps)")
    click.echo(f"sample     {result.sample_images_per_s:,.1f} images/s")
    click.echo(
        f"evaluate   {result.eval_images_per_s:,.1f} images/s (test bpd, batches of {config.train.eval_batch_size})"
    )
    click.echo(f"memory     {result.peak_memory_mb:,.0f} MB peak")
    click.echo(f"host reads {result.host_reads_per_step} per training step (on a GPU, each waits for it)")
    if result.train_tflops is not None:
        peak = f" of {result.peak_tflops:.0f} peak ({result.fraction_of_peak:.1%})" if result.peak_tflops else ""
        click.echo(f"compute    {result.train_tflops:.1f} TFLOP/s{peak}")
    if json_path is not None:
        atomic_write_json(json_path, {"model": model, "config": config.to_dict(), **dataclasses.asdict(result)})
        click.echo(f"written    {json_path}")


def _bf16_text(native: bool | None, device: str) -> str:
    """Whether ``train.precision: bf16`` would run natively (glow_repro.run.benchmark.native_bf16)."""
    where = "this GPU" if device.startswith("cuda") else "this CPU"
    if native is None:
        return "native support unknown (no /proc/cpuinfo to read the CPU's flags)"
    if native:
        return f"native on {where}"
    return f"not native on {where}: train.precision: bf16 would be emulated and slower than float32"
