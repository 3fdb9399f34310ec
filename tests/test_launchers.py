"""Launchers: a new one is one file. A toy launcher registered here, as its own module would
register itself, trains a tiny study through ``run_study`` and through ``glow-repro run
--launcher``; the command line's choices are the registry's (docs/architecture.md, "Adding a
launcher")."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.core.config import RunConfig
from glow_repro.run.rundir import RunDir, RunLock, RunState
from glow_repro.study.launchers import (
    LAUNCHERS,
    Launched,
    LauncherError,
    LaunchOptions,
    Progress,
    RunTask,
    execute,
    execute_run,
    register,
)
from glow_repro.study.runner import StudyOptions, run_study
from tests.test_runner import fake_train, make_study


class Backwards:
    """The runs one after another in this process, last run first."""

    name = "backwards"
    description = "one run after another in this process, last run first"

    def check(self) -> None:
        """Runs anywhere."""

    def slots(self, tasks: Sequence[RunTask], options: LaunchOptions) -> int:
        return 1

    def launch(self, tasks: Sequence[RunTask], options: LaunchOptions, progress: Progress) -> Launched:
        launched = Launched()
        for task in reversed(tasks):
            launched.add(execute_run(task), progress)
        return launched


@pytest.fixture
def backwards(monkeypatch: pytest.MonkeyPatch) -> Backwards:
    """The toy launcher, registered for one test only."""
    LAUNCHERS.names()  # the built-in launchers register first
    monkeypatch.setattr(LAUNCHERS, "parts", dict(LAUNCHERS.parts))
    return register(Backwards())


def test_a_registered_launcher_trains_a_study(tmp_path: Path, backwards: Backwards) -> None:
    study, results = make_study(tmp_path, widths=(12, 16), seeds=(0,)), tmp_path / "results"
    planned = [p.run.run_id for p in run_study(study, results, StudyOptions(dry_run=True)).plan]
    report = run_study(study, results, StudyOptions(launcher="backwards", train_fn=fake_train))
    assert report.counts == {"done": 2, "trained": 2, "skipped": 0}
    assert list(report.outcomes) == planned[::-1]  # in the order the launcher returned them
    assert {outcome.state for outcome in report.outcomes.values()} == {RunState.DONE}
    assert (results / "tables" / "finals.parquet").is_file()


def test_the_command_line_offers_every_registered_launcher(
    tmp_path: Path, backwards: Backwards, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("glow_repro.study.launchers.execute._default_train", lambda: fake_train)
    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    for name in ("inprocess", "local", "slurm", "submitit-local", "submitit-debug"):
        assert f"{name}:" in help_text
    study, results = make_study(tmp_path, widths=(12,), seeds=(0,)), tmp_path / "results"
    result = CliRunner().invoke(main, ["run", str(study), "--results", str(results), "--launcher", "backwards"])
    assert result.exit_code == 0, result.output
    assert "fake: 1 done (1 trained now, 0 already finished)" in result.output


def test_an_unknown_launcher_is_a_one_line_error(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    result = CliRunner().invoke(main, ["run", str(study), "--launcher", "nope", "--dry-run"])
    assert result.exit_code == 2 and "'nope' is not one of 'inprocess', 'local', 'slurm'" in result.output
    with pytest.raises(LauncherError, match="launcher 'nope': must be one of 'inprocess', 'local', 'slurm'"):
        run_study(study, tmp_path / "results", StudyOptions(launcher="nope"))


def surroundings_train(config, run_dir, **kwargs):
    """``fake_train`` that first notes what its process was given: working directory, the
    probe variable, its parent, and whether torch was already imported when it started."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    seen = {"cwd": os.getcwd(), "probe": os.environ.get("GLOW_REPRO_PROBE"), "parent": os.getppid()}
    seen["torch_preloaded"] = "torch" in sys.modules
    (Path(run_dir) / "seen.json").write_text(json.dumps(seen))
    return fake_train(config, run_dir, **kwargs)


@pytest.mark.slow  # worker processes
def test_local_workers_take_the_parents_directory_and_environment_at_each_launch(tmp_path, monkeypatch):
    """A fork server keeps the directory and environment of the moment it started; every worker
    must see the launching process's as they are at its own launch, as a spawned one would."""
    for probe in ("first", "second"):
        here = tmp_path / probe
        here.mkdir()
        monkeypatch.chdir(here)
        monkeypatch.setenv("GLOW_REPRO_PROBE", probe)
        run_study(
            make_study(here, widths=(12,), seeds=(0,)), Path("results"), StudyOptions(train_fn=surroundings_train)
        )
        seen = json.loads(next((here / "results" / "runs").glob("*/seen.json")).read_text())
        assert seen["cwd"] == str(here) and seen["probe"] == probe
        assert seen["parent"] != os.getpid()  # a separate process
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert seen["torch_preloaded"]  # forked from the server, not spawned


def test_a_signal_between_lock_and_train_leaves_the_run_untouched(tmp_path, monkeypatch):
    """A local worker's SIGINT after it has locked its run but before train() begins cancels
    the run: train is never called, nothing is written, the lock is released."""
    monkeypatch.setattr(execute._worker, "signalled", False)
    monkeypatch.setattr(execute, "_use_gpu", lambda gpu: execute.interrupt_on_signal(signal.SIGINT, None))
    trained = []
    task = RunTask("r-s0", "v", 0, RunConfig(), str(tmp_path / "r-s0"), train_fn=lambda *a, **k: trained.append(1))
    outcome = execute_run(task)
    assert outcome.state is RunState.CANCELLED and not trained
    assert RunDir(task.run_dir).state() is RunState.PENDING
    assert {p.name for p in Path(task.run_dir).iterdir()} <= {".lock"}  # the lock file, released
    assert RunLock(task.run_dir).acquire()


def _train_real_study(tmp_path: Path, name: str, options: StudyOptions) -> dict[str, list]:
    """A two-run study of the real ``train`` (tiny model, one thread a run): each run's
    metrics and evaluations, by run id."""
    base = {
        "data": {"dataset": "synthetic", "synthetic_size": 128},
        "model": {"depth": 2, "levels": 2, "width": 8},
        "train": {"steps": 6, "batch_size": 16, "eval_every": 3, "eval_limit": 32, "threads": 1, "n_samples": 2},
    }
    spec = {"name": name, "reference": "none", "base": base, "grid": {"model.coupling": ["affine"]}, "seeds": [0, 1]}
    study = tmp_path / f"{name}.yaml"
    study.write_text(json.dumps(spec))
    results = tmp_path / name
    assert run_study(study, results, options).counts["done"] == 2
    runs = sorted((results / "runs").iterdir())
    return {run.name: [RunDir(run).metrics.read(), RunDir(run).evals.read()] for run in runs}


def _floats(rows: list) -> list:
    """The rows without their timings, which no two processes share."""
    timed = ("wall_time", "step_time", "images_per_s")
    return [[{k: v for k, v in row.items() if k not in timed} for row in part] for part in rows]


@pytest.mark.slow  # trains six tiny runs, four of them in worker processes
def test_forked_spawned_and_in_process_runs_give_the_same_floats(tmp_path, monkeypatch):
    """A run trained by a worker forked from the fork server, by a spawned one and in the
    launching process logs bit-identical losses, gradient norms and test bpd."""
    from glow_repro.study.launchers import local

    forked = _train_real_study(tmp_path, "forked", StudyOptions(workers=2))
    here = _train_real_study(tmp_path, "here", StudyOptions(launcher="inprocess"))
    monkeypatch.setattr(local, "worker_context", lambda: multiprocessing.get_context("spawn"))
    spawned = _train_real_study(tmp_path, "spawned", StudyOptions(workers=2))
    assert forked.keys() == here.keys() == spawned.keys()
    for run in forked:
        assert _floats(forked[run]) == _floats(here[run]) == _floats(spawned[run]), run
        assert len(forked[run][1]) == 3  # evaluations at steps 0, 3, 6


def test_a_worker_whose_launcher_is_gone_does_not_start(monkeypatch):
    """``_terminate_with`` is False for a launcher that has exited, with pidfds or, on systems
    without them, by the plain liveness check; that check says True for a live one."""
    import subprocess

    from glow_repro.study.launchers import local

    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not local._terminate_with(gone.pid)

    def no_pidfds(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds, raising=False)
    assert not local._terminate_with(gone.pid)
    assert local._terminate_with(os.getpid())
