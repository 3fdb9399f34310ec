"""``glow-repro run`` and ``glow-repro status``: run a study, see where it stands."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from glow_repro.commands.base import text_table, user_errors, warn_about_results
from glow_repro.core.registry import one_of
from glow_repro.run.rundir import RunDir, RunState
from glow_repro.study.labels import duration
from glow_repro.study.launchers import LAUNCHERS

if TYPE_CHECKING:  # the runner is imported when a study runs, not when the command line starts
    from glow_repro.study.runner import StudyReport


def _counts(states: list[RunState]) -> str:
    return ", ".join(f"{states.count(state)} {state.label}" for state in RunState.display_order(states))


class _Workers(click.ParamType):
    """``auto`` (None: chosen when launched) or a positive number of workers."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither 'auto' nor a whole number of at least 1", param, ctx)
        return number


WORKERS = _Workers()


class _Launcher(click.ParamType):
    """A launcher's name, checked against the registry when the command runs (so one
    registered after this module was imported is a choice too)."""

    name = "launcher"

    def get_metavar(self, param, ctx=None):
        return f"[{'|'.join(LAUNCHERS.names())}]"

    def convert(self, value, param, ctx):
        if value not in LAUNCHERS.names():
            self.fail(f"{value!r} is not one of {one_of(LAUNCHERS.names())}", param, ctx)
        return value


def _launcher_help() -> str:
    return "how the runs are trained: " + "; ".join(
        f"{name}: {LAUNCHERS[name].description}" for name in LAUNCHERS.names()
    )


@click.command("run")
@click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="results directory [default: results/<study name>]",
)
@click.option(
    "--workers",
    type=WORKERS,
    default="auto",
    show_default=True,
    help="runs trained at once by the local launcher (CPU threads are split among them); "
    "auto: one per core (or per train.threads), capped by memory; one per GPU on CUDA",
)
@click.option(
    "--launcher",
    type=_Launcher(),
    default="local",
    show_default=True,
    help=_launcher_help(),
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a base config value for every run, e.g. --set train.steps=50",
)
@click.option(
    "--only",
    multiple=True,
    metavar="KEY=VALUE",
    help="run only matching runs, e.g. --only permutation=conv1x1 --only seed=0",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="also write TensorBoard event files in every run (tensorboard --logdir RESULTS; "
    "needs the tensorboard extra; does not change run ids)",
)
@click.option("--dry-run", is_flag=True, help="print the runs and what would happen, then exit")
@click.option("--retry-failed", is_flag=True, help="train failed runs again (resuming if possible)")
@click.option(
    "--force-spec", is_flag=True, help="write into a results directory that another spec of the study wrote to"
)
@click.option(
    "--until-resolved",
    is_flag=True,
    help="add seeds to every variant, look by look, while a claim of the study is inconclusive, "
    "up to --max-seeds, judging each look at a group-sequential boundary (docs/verdicts.md)",
)
@click.option(
    "--max-seeds",
    type=click.IntRange(min=1, max=64),
    help="most seeds per variant --until-resolved trains [default: the study's max_seeds, else 12]",
)
@click.option("--partition", help="SLURM partition")
@click.option("--time", "time_", metavar="TIME", help="SLURM time limit: minutes or HH:MM:SS")
@click.option("--gpus", type=click.IntRange(min=0), help="SLURM GPUs per node")
@click.option(
    "--processes-per-run",
    type=click.IntRange(min=1),
    help="SLURM: data-parallel processes (tasks) per run, one per GPU",
)
@user_errors
def run_command(
    study: Path,
    results_dir: Path | None,
    workers: int | None,
    launcher: str,
    overrides: tuple[str, ...],
    only: tuple[str, ...],
    tensorboard: bool,
    dry_run: bool,
    retry_failed: bool,
    force_spec: bool,
    until_resolved: bool,
    max_seeds: int | None,
    partition: str | None,
    time_: str | None,
    gpus: int | None,
    processes_per_run: int | None,
) -> None:
    """Train every run of STUDY (a study YAML) that is not finished yet.

    Finished runs are skipped, interrupted ones resume from their checkpoint, failed ones
    are retried with --retry-failed. Safe to run twice at once on one results directory,
    except with --until-resolved, where the second is refused (one judge at a time).
    At the end (unless interrupted) the long tables of every run, failed ones included, are
    written to tables/ in the results directory, as parquet and CSV.
    When the study declares claims, their verdicts are printed and written to
    tables/verdicts.* (docs/verdicts.md). The last line is the time to a verdict: wall time,
    CPU-minutes of the runs trained, looks taken (docs/cost.md).
    Exit status: 0 all selected runs finished, 1 some failed or have an unreadable status,
    130 interrupted (Ctrl-C or SIGTERM).
    """
    from glow_repro.analysis.sequential import SeedJudge
    from glow_repro.study.runner import StudyOptions, run_study

    if max_seeds is not None and not until_resolved:
        raise click.UsageError("--max-seeds only applies with --until-resolved")
    if tensorboard:
        overrides = (*overrides, "train.tensorboard=true")
    started = time.perf_counter()
    options = StudyOptions(
        launcher=launcher,
        workers=workers,
        resources={
            "partition": partition,
            "time": time_,
            "gpus_per_node": gpus,
            "processes_per_run": processes_per_run,
        },
        overrides=overrides,
        only=only,
        dry_run=dry_run,
        retry_failed=retry_failed,
        force_spec=force_spec,
    )
    report = run_study(study, results_dir, options, judge=SeedJudge(max_seeds) if until_resolved else None)
    if dry_run:
        _echo_plan(report)
        return
    _echo_progress(report)
    if report.tables_dir is not None:
        _echo_results(report)
    if report.interrupted:
        _exit_interrupted(report)
    click.echo(_time_to_verdict(report, time.perf_counter() - started))
    _exit_on_failures(report)


def _echo_plan(report: StudyReport) -> None:
    """--dry-run: every planned run with its state and what would happen to it."""
    from glow_repro.study.runner import LAUNCH_ACTIONS

    plan = report.plan
    n_variants = len({p.run.variant for p in plan})
    n_seeds = len({p.run.seed for p in plan})
    click.echo(
        f"{report.spec.name}: {len(plan)} runs ({n_variants} variants x {n_seeds} seeds) -> {report.results_dir}"
    )
    rows = [[p.run.run_id, p.run.variant, str(p.run.seed), p.state, p.action] for p in plan]
    click.echo(text_table(["run id", "variant", "seed", "state", "action"], rows))
    n_launch = sum(p.action in LAUNCH_ACTIONS for p in plan)
    click.echo(f"would train {n_launch} of {len(plan)} runs")


def _echo_progress(report: StudyReport) -> None:
    """The runs per final state and what this invocation did with them, the runs left to
    other processes, where the tables are, and each look of --until-resolved."""
    states = [report.final_state(p) for p in report.plan]
    click.echo(f"{report.spec.name}: {_counts(states)} ({_accounting(report)}) -> {report.results_dir}")
    for planned in report.runs_in(RunState.ELSEWHERE):
        click.echo(f"  running elsewhere (locked by another process): {planned.run.run_id}")
    if report.tables_dir is not None:
        click.echo(f"tables: {report.tables_dir}/ (steps, evals, finals, events as .parquet and .csv)")
    for decision in report.decisions:
        click.echo(
            f"look {decision.look + 1} of {len(decision.looks)} ({decision.seeds} seeds, paired-t threshold "
            f"p <= {decision.threshold:.3g}, alpha spent {decision.alpha_spent:.3g} of {decision.alpha:g}): "
            f"{decision.action}: {decision.reason}"
        )


def _echo_results(report: StudyReport) -> None:
    """Once the tables are written: the runs they leave out, and the claims' verdicts (also
    written to tables/verdicts.*) when the study declares claims."""
    from glow_repro.study.tables import left_out_runs

    warn_about_results(report.results_dir, left_out_runs(report.results_dir))
    if report.spec.claims:
        from glow_repro.analysis.sequential import write_verdicts
        from glow_repro.commands.verdict import echo_verdicts

        echo_verdicts(write_verdicts(report.results_dir))


def _exit_interrupted(report: StudyReport) -> None:
    """Name the runs a Ctrl-C or SIGTERM stopped, and exit with status 130."""
    stopped = [p.run.run_id for p in report.runs_in(RunState.INTERRUPTED)]
    click.echo(
        f"interrupted: {', '.join(stopped) or 'no run was training'}; checkpoints kept. "
        f"Run the same command again to resume.",
        err=True,
    )
    click.get_current_context().exit(130)


def _exit_on_failures(report: StudyReport) -> None:
    """Name each failed run with its error and each run with an unreadable status, and exit
    with status 1 if there is any."""
    failed = report.runs_in(RunState.FAILED)
    if failed:
        for planned in failed:
            error = report.outcomes.get(planned.run.run_id)
            reason = (error.error if error and error.error else "failed earlier").splitlines()[0]
            click.echo(f"  failed: {planned.run.run_id}: {reason}", err=True)
        click.echo(
            "details in runs/<id>/status.json; once what an error names is fixed, "
            "rerun with --retry-failed to train them again",
            err=True,
        )
    unreadable = report.runs_in(RunState.UNREADABLE)
    for planned in unreadable:  # not trained: that could overwrite a finished run
        click.echo(f"  unreadable: {planned.run.run_id}: {RunDir(planned.run_dir).status()['error']}", err=True)
    if failed or unreadable:
        click.get_current_context().exit(1)


def _time_to_verdict(report: StudyReport, wall: float) -> str:
    """What the command cost, in one line: its wall time, the CPU-minutes of the runs it
    trained and, with --until-resolved, the looks taken (docs/cost.md)."""
    cpu, unknown = report.training_cpu_seconds()
    spent = f"{cpu / 60:.1f} CPU-minutes in training"
    if unknown:
        spent += f" ({unknown} trained run{'s' * (unknown != 1)} without a recorded thread count left out)"
    parts = [f"{duration(wall)} wall", spent]
    if report.decisions:
        looks = len(report.decisions)
        parts.append(f"{looks} look{'s' * (looks != 1)} ({report.decisions[-1].seeds} seeds)")
    return f"{'time to verdict' if report.spec.claims else 'time'}: {', '.join(parts)}"


def _accounting(report: StudyReport) -> str:
    """What this invocation did with each planned run, in parts that add up to the plan."""
    not_trained = (RunState.CANCELLED, RunState.ELSEWHERE)
    reasons = {"keep-failed": "failed before (--retry-failed trains them)", RunState.ELSEWHERE: "training elsewhere",
               "unreadable": "with an unreadable status"}  # fmt: skip
    parts: Counter[str] = Counter()
    for planned in report.plan:
        outcome = report.outcomes.get(planned.run.run_id)
        if outcome is not None and outcome.state not in not_trained:
            parts["trained now"] += 1
        elif planned.action == "skip":
            parts["already finished"] += 1
        else:
            key = outcome.state if outcome is not None else planned.action
            parts[reasons.get(key, "not started (stopped)")] += 1
    parts.setdefault("trained now", 0)
    parts.setdefault("already finished", 0)
    order = ["trained now", "already finished"]
    return ", ".join(f"{parts[name]} {name}" for name in order + sorted(set(parts) - set(order)))


def _bpd(run) -> str:
    """The last test bpd; for a run that is not done, with the step it was measured at, so a
    diverged run's step-0 evaluation is not read as its result."""
    if run.test_bpd is None:
        return "-"
    if run.state is RunState.DONE or run.test_bpd_step is None:
        return f"{run.test_bpd:.3f}"
    return f"{run.test_bpd:.3f} @{run.test_bpd_step}"


@click.command("status")
@click.argument("results_dir", type=click.Path(path_type=Path))
@user_errors
def status_command(results_dir: Path) -> None:
    """Show every run of RESULTS_DIR: state, step, last test bpd and wall time, and where
    the long tables are once a `glow-repro run` has written them."""
    from glow_repro.study.runner import collect_status, tables_dir
    from glow_repro.study.tables import left_out_runs

    runs = collect_status(results_dir)
    rows = [
        [
            r.run_id,
            r.variant,
            "-" if r.seed is None else str(r.seed),
            r.state,
            "-" if r.step is None else str(r.step),
            _bpd(r),
            duration(r.wall_time),
        ]
        for r in runs
    ]
    click.echo(text_table(["run id", "variant", "seed", "state", "step", "test bpd", "wall"], rows))
    click.echo(f"{len(runs)} runs: {_counts([r.state for r in runs]) or 'none started'}")
    tables = tables_dir(results_dir)
    if tables is not None:
        click.echo(f"tables: {tables}/ (written when the last uninterrupted `glow-repro run` ended)")
    for r in runs:
        if r.state in (RunState.FAILED, RunState.UNREADABLE) and r.error:
            click.echo(f"  {r.state} {r.run_id}: {r.error.splitlines()[0][:300]}")
    if any(r.state is RunState.KILLED for r in runs):
        click.echo("  killed: status says running but no process holds the run; `glow-repro run` resumes it")
    warn_about_results(results_dir, left_out_runs(results_dir))
