"""Run a study: plan which runs need training, launch them, and report; with a judge,
add seeds until the study's claims are resolved (docs/verdicts.md).

Results go to ``results/<study name>/`` unless ``--results`` says otherwise; its layout is
:class:`glow_repro.run.rundir.StudyDir`.

A run is skipped when its status is ``done`` or ``diverged``; ``interrupted`` runs (and
``running`` ones whose lock nobody holds: a killed runner) resume from their checkpoint;
``failed`` runs are retried only with ``retry_failed``; runs locked by another process are
left to it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from glow_repro.core.config import ConfigError, parse_override, validate_model
from glow_repro.errors import ResultsDirError
from glow_repro.run.rundir import (
    RunDir,
    RunState,
    StudyDir,
    UnreadableFileError,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from glow_repro.run.tensorboard_log import require_tensorboard
from glow_repro.study.launchers import Launcher, LaunchOptions, Outcome, Progress, RunTask, TrainFn
from glow_repro.study.launchers.base import checked_launcher
from glow_repro.study.launchers.slurm import SlurmResources
from glow_repro.study.record import RecordedLook, SeedRecord
from glow_repro.study.spec import (
    RunSpec,
    StudySpec,
    expand,
    load_study,
    spec_hash,
    spec_yaml,
    with_overrides,
)
from glow_repro.study.tables import load_tables, write_tables
from glow_repro.study.workers import choose_workers

#: Plan actions that launch training.
LAUNCH_ACTIONS = ("train", "resume", "retry")


@dataclass(frozen=True)
class PlannedRun:
    """One run of the study and what the runner will do with it."""

    run: RunSpec
    run_dir: Path
    state: RunState  # the run's state now; ``killed`` = status says running, but no lock is held
    action: str  # RunState.action: train | resume | retry | skip | keep-failed | elsewhere | unreadable


class LookDecision(Protocol):
    """What a judge decides after a look: ``continue`` (training ``add_seeds`` next) or stop."""

    @property
    def action(self) -> str: ...

    @property
    def add_seeds(self) -> list[int]: ...

    def record(self) -> RecordedLook: ...


class Judge(Protocol):
    """Decides, from the results so far, whether to add seeds (``--until-resolved``: the
    statistics live in ``glow_repro.analysis.sequential``, above this layer)."""

    def check(self, spec: StudySpec) -> None:
        """Raise ConfigError before anything trains if the spec cannot be judged."""

    def resume(self, spec: StudySpec, results_dir: Path) -> tuple[int, list[int], list[RecordedLook]]:
        """The next look, the seeds it needs, and the looks recorded so far (ResultsDirError
        when the record holds another plan)."""

    def __call__(self, spec: StudySpec, results_dir: Path, look: int) -> LookDecision: ...


@dataclass(frozen=True)
class StudyOptions:
    """How :func:`run_study` runs a study: the options of ``glow-repro run``."""

    launcher: str = "local"  # a name in glow_repro.study.launchers.LAUNCHERS
    workers: int | None = 1  # runs at once (local launcher); None: chosen by glow_repro.study.workers
    resources: Mapping[str, Any] = field(default_factory=dict)
    """Changes to the spec's ``launcher:`` section (SlurmResources): partition, time, ...; None
    values are left out."""
    overrides: Sequence[str] = ()  # --set key.path=value, for every run
    only: Sequence[str] = ()  # --only key=value: train only the matching runs
    dry_run: bool = False  # plan, write nothing
    retry_failed: bool = False  # train failed runs again
    force_spec: bool = False  # write into a results directory of another spec of the study
    train_fn: TrainFn | None = None  # replaces glow_repro.run.train.train (tests)


@dataclass
class StudyReport:
    """What ``run_study`` did: the plan, each launched run's outcome, and whether Ctrl-C hit."""

    spec: StudySpec
    results_dir: Path
    plan: list[PlannedRun]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    interrupted: bool = False
    tables_dir: Path | None = None
    """Where the long tables were written; None on --dry-run, Ctrl-C, or when no run has
    started (none has a config.yaml)."""
    workers: int | None = None
    """Runs trained at once in the last launch (chosen by ``--workers auto`` or given)."""
    decisions: list[RecordedLook] = field(default_factory=list)
    """Every look of ``--until-resolved`` so far, as recorded in decisions.jsonl."""

    def final_state(self, planned: PlannedRun) -> RunState:
        """The run's state after this invocation; ``elsewhere`` = another process has it."""
        outcome = self.outcomes.get(planned.run.run_id)
        if outcome is not None and outcome.state is not RunState.CANCELLED:
            return outcome.state
        return {"keep-failed": RunState.FAILED, "elsewhere": RunState.ELSEWHERE}.get(planned.action, planned.state)

    @property
    def counts(self) -> dict[str, int]:
        """Runs per final state, plus ``trained`` (runs trained by this invocation) and
        ``skipped`` (finished before it)."""
        counts: Counter[str] = Counter(self.final_state(p) for p in self.plan)
        counts["trained"] = sum(o.state not in (RunState.CANCELLED, RunState.ELSEWHERE) for o in self.outcomes.values())
        counts["skipped"] = sum(p.action == "skip" for p in self.plan)
        return dict(counts)

    def runs_in(self, state: RunState) -> list[PlannedRun]:
        return [p for p in self.plan if self.final_state(p) == state]

    def training_cpu_seconds(self) -> tuple[float, int]:
        """CPU-seconds spent training the runs this invocation trained: each run's recorded
        wall time (summary.json, else its last logged step; a resumed run's earlier sessions
        included) times its threads and processes (environment.json). Also how many of those
        runs have a wall time but no readable thread count (left out of the sum)."""
        total, unknown = 0.0, 0
        for run_id, outcome in self.outcomes.items():
            if outcome.state in (RunState.CANCELLED, RunState.ELSEWHERE):
                continue
            run = StudyDir(self.results_dir).run(run_id)
            try:
                wall = run.summary().get("wall_time")
                if wall is None:
                    steps = run.metrics.read()
                    wall = steps[-1].get("wall_time") if steps else None
                environment = read_json(run.environment, default={}, expect=dict)
            except UnreadableFileError:
                unknown += 1
                continue
            seconds = _number(wall)
            threads, processes = _number(environment.get("threads")), _number(environment.get("world_size", 1))
            if seconds is None:
                continue  # stopped before its first logged step: nothing measurable spent
            if threads is None or processes is None:
                unknown += 1
                continue
            total += seconds * threads * processes
        return total, unknown


def select_runs(runs: list[RunSpec], only: Sequence[str], source: str) -> list[RunSpec]:
    """Runs matching every ``--only key=value`` (several values for one key: any of them).
    A key is ``seed``, a full config path, or the last part of a swept key."""
    if not only:
        return runs
    swept = sorted({key for run in runs for key in run.overrides})
    wanted: dict[str, list[tuple[str, Any]]] = {}
    for text in only:
        key, parsed = parse_override(text)
        raw = text.partition("=")[2].strip()
        wanted.setdefault(_resolve_key(key, swept, runs[0], text), []).append((raw, parsed))
    chosen = [
        run
        for run in runs
        if all(any(_matches(_value(run, key), *v) for v in values) for key, values in wanted.items())
    ]
    if not chosen:
        raise ConfigError(f"{source}: no run matches --only {' --only '.join(only)}")
    return chosen


def _resolve_key(key: str, swept: list[str], sample: RunSpec, text: str) -> str:
    if key == "seed" or key in swept:
        return key
    by_suffix = [full for full in swept if full.rsplit(".", 1)[-1] == key]
    if len(by_suffix) == 1:
        return by_suffix[0]
    try:
        _value(sample, key)
    except (KeyError, TypeError):
        raise ConfigError(
            f"--only {text}: unknown key {key}; swept keys: {', '.join(swept) or 'none'}, seed, or any config key.path"
        ) from None
    return key


def _value(run: RunSpec, key: str) -> Any:
    if key == "seed":
        return run.seed
    node: Any = run.config.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def _matches(actual: Any, text: str, parsed: Any) -> bool:
    """``--only`` value equality that accepts ``1e-3`` (a string to YAML) for 0.001."""
    if actual == parsed or str(actual) == text:
        return True
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(text) == actual
        except ValueError:
            return False
    return False


def plan_study(
    spec: StudySpec, results_dir: Path, only: Sequence[str] = (), retry_failed: bool = False
) -> list[PlannedRun]:
    """Expand the spec, apply ``--only`` and decide what to do with each run."""
    runs = select_runs(expand(spec), only, spec.source)
    if any(run.config.train.tensorboard for run in runs):
        require_tensorboard(f"{spec.source}: train.tensorboard")
    plan = []
    for run in runs:
        run_dir = StudyDir(results_dir).run(run.run_id)
        state = run_dir.observed_state()
        plan.append(PlannedRun(run, run_dir.path, state, state.action(retry_failed)))
    return plan


def _record_study(spec: StudySpec, results_dir: Path, runs: Sequence[RunSpec], until_resolved: bool) -> None:
    """Write study.yaml and add the runs to manifest.json (under a lock: runners may race);
    ``until_resolved`` marks, for good, a directory whose seeds are added by looking."""
    study = StudyDir(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(study.manifest_lock, timeout=60):
        atomic_write_text(study.study_file, spec_yaml(spec))
        manifest = read_manifest(results_dir) or {"runs": {}}
        earlier = manifest.get("specs") or ([manifest["spec_hash"]] if "spec_hash" in manifest else [])
        manifest["study"] = spec.name
        manifest["spec_hash"] = spec_hash(spec)
        manifest["until_resolved"] = bool(manifest.get("until_resolved")) or until_resolved
        manifest["specs"] = list(dict.fromkeys([*earlier, manifest["spec_hash"]]))  # more than one: --force-spec
        for run in runs:
            manifest["runs"][run.run_id] = {"variant": run.variant, "seed": run.seed, "overrides": run.overrides}
        atomic_write_json(study.manifest, manifest)


def check_spec(spec: StudySpec, results_dir: Path, force: bool = False) -> None:
    """Refuse a results directory that another spec of the study wrote to (its runs would be
    compared with this spec's as one study), unless ``force``."""
    manifest = read_manifest(results_dir) if results_dir.is_dir() else None
    recorded, current = (manifest or {}).get("spec_hash"), spec_hash(spec)
    if recorded and recorded != current and not force:
        raise ResultsDirError(
            f"{results_dir}: holds the runs of another spec of study {spec.name!r} (spec hash "
            f"{recorded}; {spec.source} has {current}): give this one its own --results directory, "
            "or pass --force-spec to add its runs to these anyway"
        )


def run_study(
    spec_path: str | Path,
    results_dir: str | Path | None = None,
    options: StudyOptions = StudyOptions(),
    judge: Judge | None = None,
) -> StudyReport:
    """Train every run of a study that is not finished yet; see the module docstring.

    Results go to ``results_dir``, by default ``results/<study name>``. With a ``judge``, after
    each look the judge decides whether to train more seeds of every variant; each decision
    is appended to decisions.jsonl. The manipulations the spec asks for are written last
    (:mod:`glow_repro.study.manipulations`). On Ctrl-C the report comes back with
    ``interrupted=True`` once the workers have checkpointed. A results directory written by
    another spec of the study is refused unless ``options.force_spec`` (:func:`check_spec`).
    """
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"workers {options.workers}: must be at least 1")
    spec = with_overrides(load_study(spec_path), tuple(options.overrides))
    if judge is not None:
        judge.check(spec)
        if options.only:
            raise ConfigError("--only cannot be combined with --until-resolved: every look judges all the runs")
    given = {key: value for key, value in options.resources.items() if value is not None}
    resources = validate_model(
        SlurmResources, {**spec.launcher.model_dump(), **given}, "--partition/--time/--gpus/--processes-per-run"
    )
    results = Path(results_dir) if results_dir is not None else Path("results") / spec.name
    check_spec(spec, results, options.force_spec)
    if options.dry_run:
        return _planned(spec, results, judge, options)[0]
    launcher = checked_launcher(options.launcher)
    settings = resources.model_dump()
    with SeedRecord(results).writer() if judge is not None else contextlib.nullcontext():
        report, look = _planned(spec, results, judge, options)
        while True:
            _launch(report, launcher, options, settings, until_resolved=judge is not None)
            stopped = bool(report.decisions) and report.decisions[-1].action == "stop"
            if judge is None or report.interrupted or stopped:
                break
            decision = judge(spec, results, look).record()
            SeedRecord(results).append(decision)
            report.decisions.append(decision)
            if decision.action != "continue":
                break
            report.spec = report.spec.model_copy(update={"seeds": [*report.spec.seeds, *decision.add_seeds]})
            report.plan = plan_study(report.spec, results, options.only, options.retry_failed)
            look += 1
    if not report.interrupted and report.spec.manipulations:
        from glow_repro.study.manipulations import write_study_manipulations  # loads torch: only when asked

        write_study_manipulations(report.spec, results)
    return report


def _planned(spec: StudySpec, results: Path, judge: Judge | None, options: StudyOptions) -> tuple[StudyReport, int]:
    """The report before training and the look to take next: with a judge, the seeds are
    those of that look, resumed from the record."""
    look = 0
    recorded: list[RecordedLook] = []
    if judge is not None:
        look, seeds, recorded = judge.resume(spec, results)
        spec = spec.model_copy(update={"seeds": list(seeds)})
    plan = plan_study(spec, results, options.only, options.retry_failed)
    return StudyReport(spec, results, plan, decisions=list(recorded)), look


def _launch(
    report: StudyReport,
    launcher: Launcher,
    options: StudyOptions,
    settings: Mapping[str, Any],
    until_resolved: bool,
) -> None:
    """Train the plan's unfinished runs, then write the tables (unless interrupted)."""
    launch = [p for p in report.plan if p.action in LAUNCH_ACTIONS]
    _record_study(report.spec, report.results_dir, [p.run for p in report.plan], until_resolved)
    tasks = [
        RunTask(
            run_id=p.run.run_id,
            variant=p.run.variant,
            seed=p.run.seed,
            config=p.run.config,
            run_dir=str(p.run_dir),
            train_fn=options.train_fn,
        )
        for p in launch
    ]
    report.workers = options.workers or choose_workers([task.config for task in tasks])
    launch_options = LaunchOptions(
        study=report.spec.name,
        folder=StudyDir(report.results_dir).submitit,
        workers=report.workers,
        settings=settings,
    )
    with Progress(tasks, desc=report.spec.name, slots=launcher.slots(tasks, launch_options)) as progress:
        launched = launcher.launch(tasks, launch_options, progress)
    report.outcomes.update({outcome.run_id: outcome for outcome in launched.outcomes})
    report.interrupted = launched.interrupted
    if not report.interrupted:
        report.tables_dir = write_study_tables(report.results_dir)


def write_study_tables(results_dir: Path) -> Path | None:
    """Write ``results/<study>/tables/`` from every run there;
    None when no run has a config yet (all failed before starting, e.g. missing data).

    Under a lock, so that of two runners finishing together the second reads and writes last.
    """
    study = StudyDir(results_dir)
    with FileLock(study.tables_lock):
        try:
            tables = load_tables(results_dir)
        except ResultsDirError:
            return None
        write_tables(tables, study.tables)
    return study.tables


def tables_dir(results_dir: str | Path) -> Path | None:
    """``results/<study>/tables/`` if a run of the study has written it, else None."""
    path = StudyDir(results_dir).tables
    return path if (path / "finals.parquet").is_file() else None


@dataclass(frozen=True)
class RunStatus:
    """One row of ``glow-repro status``."""

    run_id: str
    variant: str
    seed: int | None
    state: RunState
    step: int | None
    test_bpd: float | None
    test_bpd_step: int | None  # the step of that evaluation (0: before any training)
    wall_time: float | None
    error: str | None


def read_manifest(results_dir: Path) -> dict[str, Any] | None:
    """manifest.json of a results directory (None when there is none); a damaged one is an
    UnreadableFileError that says how to rebuild it."""
    path = StudyDir(results_dir).manifest
    remedy = "delete it: the next `glow-repro run` of the study writes it again"
    manifest = read_json(path, default=None, expect=dict, remedy=remedy)
    if manifest is not None and not (
        isinstance(manifest.get("runs", {}), dict)
        and all(isinstance(v, dict) for v in manifest.get("runs", {}).values())
    ):
        raise UnreadableFileError(f"{path}: its runs are not a mapping of run ids to runs; {remedy}")
    return manifest


def collect_status(results_dir: str | Path) -> list[RunStatus]:
    """Every run of a results directory (manifest order, then unlisted run dirs)."""
    results, study = Path(results_dir), StudyDir(results_dir)
    manifest = read_manifest(results) if results.is_dir() else None
    if not results.is_dir() or (manifest is None and not study.runs.is_dir()):
        raise ResultsDirError(
            f"{results}: not a results directory (no {study.manifest.name} or {study.runs.name}/); give the folder "
            "`glow-repro run` wrote, e.g. results/<study name>"
        )
    listed: dict[str, dict[str, Any]] = (manifest or {}).get("runs", {})
    found = [run.path.name for run in study.run_dirs()]
    ids = list(listed) + [run_id for run_id in found if run_id not in listed]
    return [_run_status(study.run(run_id).path, listed.get(run_id, {})) for run_id in ids]


def _number(value: Any) -> float | None:
    """``value`` when a JSON file held a number there, else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _step(value: Any) -> int | None:
    """``value`` when a JSON file held a step (a whole number) there, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _run_status(path: Path, entry: dict[str, Any]) -> RunStatus:
    """One row of ``status``; a run whose records cannot be read is ``unreadable``, with why."""
    run_dir = RunDir(path)
    status, state = run_dir.status(), run_dir.observed_state()
    try:
        summary = run_dir.summary()
        evals = [row for row in run_dir.evals.read() if _number(row.get("test_bpd")) is not None]
    except UnreadableFileError as err:
        summary, evals, state = {}, [], RunState.UNREADABLE
        status = {**status, "error": str(err)}
    bpd = summary.get("final_test_bpd", evals[-1]["test_bpd"] if evals else None)
    bpd_step = _step(evals[-1].get("step")) if evals and bpd is not None else None
    wall = summary.get("wall_time", status.get("wall_time"))
    seed = entry.get("seed")
    return RunStatus(
        run_id=path.name,
        variant=str(entry.get("variant", "?")),
        seed=seed if isinstance(seed, int) else None,
        state=state,
        step=_step(status.get("step", summary.get("step"))),
        test_bpd=_number(bpd),
        test_bpd_step=bpd_step,
        wall_time=_number(wall),
        error=status.get("error") if isinstance(status.get("error"), str) else None,
    )
