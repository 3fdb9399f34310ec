"""Launchers: a new one is one file. A toy launcher registered here, as its own module would
register itself, trains a tiny study through ``run_study`` and through ``glow-repro run
--launcher``; the command line's choices are the registry's (docs/architecture.md, "Adding a
launcher")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.run.rundir import RunState
from glow_repro.study.launchers import (
    LAUNCHERS,
    Launched,
    LauncherError,
    LaunchOptions,
    Progress,
    RunTask,
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
