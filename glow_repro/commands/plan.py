"""``glow-repro plan``: what a study costs at a given throughput, and the seeds its claims need
(docs/cost.md)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from glow_repro.commands.base import text_table, user_errors


@click.command("plan")
@click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--images-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="training images/s of one worker (one run at a time: a GPU, or a CPU worker of run --workers)",
)
@click.option(
    "--bench",
    "bench_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="read the training images/s from a `glow-repro bench --json FILE` file instead",
)
@click.option(
    "--pilot-sd",
    multiple=True,
    metavar="CLAIM=SD",
    help="the paired SD of a claim's seed differences (bpd; e.g. from a pilot, docs/pilot.md): "
    "prices the seeds a fixed design needs at the claim's min_effect",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="workers training at once: the wall-time column divides the device time among them",
)
@user_errors
def plan_command(
    study: Path, images_per_second: float | None, bench_path: Path | None, pilot_sd: tuple[str, ...], workers: int
) -> None:
    """Print what STUDY (a study YAML) costs at a training throughput: variants, steps and
    images per run, device-hours per seed, at each look --until-resolved plans and, with
    --pilot-sd, for the seeds each claim needs. Assumes a constant throughput and counts no
    evaluation, sampling or start-up time (docs/cost.md)."""
    from glow_repro.analysis.cost import bench_throughput, hours_text, parse_pilot_sd, study_cost
    from glow_repro.analysis.verdicts import number, seeds_text
    from glow_repro.core.config import ConfigError
    from glow_repro.study.spec import load_study

    if (images_per_second is None) == (bench_path is None):
        raise ConfigError("plan: give the training throughput as --images-per-second X or as --bench FILE (one)")
    spec = load_study(study)
    sds = parse_pilot_sd(pilot_sd, spec)
    if bench_path is not None:
        rate, measured = bench_throughput(bench_path)
        source = f"{bench_path}: {measured}"
    elif images_per_second is not None:
        rate, source = images_per_second, "--images-per-second"
    cost = study_cost(spec)
    plan = cost.plan

    def spent(seeds: float) -> tuple[str, str]:
        seconds = cost.device_seconds(seeds, rate)
        hours = seconds / 3600
        return (f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"), hours_text(seconds / workers)

    click.echo(f"{spec.name} ({spec.source})")
    click.echo(f"variants       {len(cost.variants)}: one run each per seed")
    shapes = {(v.steps, v.batch_size, v.budget) for v in cost.variants}
    for variant in cost.variants if len(shapes) > 1 else cost.variants[:1]:
        name = f" {variant.variant}:" if len(shapes) > 1 else ""
        click.echo(
            f"per run       {name} {variant.steps:,} steps ({variant.budget}) of batch {variant.batch_size}: "
            f"{variant.images:,} images"
        )
    click.echo(f"throughput     {rate:,.0f} images/s per worker ({source})")
    click.echo(f"per seed       {cost.images_per_seed:,} images: {spent(1)[0]} device-hours")
    thresholds = plan.boundary.t_thresholds()
    rows = []
    for index, seeds in enumerate(plan.looks):
        what = f"look {index + 1} of {len(plan.looks)}"
        if seeds == len(spec.seeds):
            what += " (the study's seeds)"
        if seeds == plan.max_seeds:
            what += f" ({'its' if spec.max_seeds else 'the default'} max_seeds)"
        rows.append([str(seeds), what, number(thresholds[index]), *spent(seeds)])
    needs = [cost.need(claim, sds[claim.id]) for claim in spec.claims if claim.id in sds]
    for need in needs:
        effect = "margin" if need.claim.margin else "min_effect"
        what = (
            f"{need.claim.id}: fixed design, 80 % power at {effect} {number(need.claim.sizing_effect)} "
            f"(SD {number(need.sd)}, dz {need.dz:.2f})"
        )
        cells = spent(need.seeds) if math.isfinite(need.seeds) else ("-", "-")
        rows.append([seeds_text(need.seeds), what, number(need.threshold), *cells])
    header = ["seeds", "what", "p threshold", "device-hours", f"wall on {workers} worker{'s' * (workers != 1)}"]
    click.echo(text_table(header, rows))
    click.echo(f"looks: {plan.boundary.describe()} at alpha {plan.alpha:g} (docs/verdicts.md)")
    for need in needs:
        powers = " / ".join(f"{p:.2f}" for p in need.look_power)
        click.echo(
            f"{need.claim.id}: a pair whose true effect is {number(need.claim.sizing_effect)} is significant at "
            f"each look's own threshold with probability {powers} (each a lower bound on its chance of being "
            "reproduced by that look)"
        )
    for claim in spec.claims:
        if claim.id not in sds:
            click.echo(f"{claim.id}: give --pilot-sd {claim.id}=SD for the seeds it needs")
    click.echo("assumes a constant throughput; evaluation, sampling and start-up are not counted (docs/cost.md)")
