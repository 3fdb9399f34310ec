"""``glow-repro run`` and ``glow-repro status``: dry runs, one-line errors, the status
table, and (slow) the smoke study trained for real, killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.run.rundir import RunDir, RunLock, RunState
from glow_repro.study.runner import StudyOptions, run_study
from tests.test_runner import FAIL_WIDTH, fake_train, make_study

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "studies" / "smoke.yaml"


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path):
    result = cli("run", SMOKE, "--results", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"smoke: 4 runs (2 variants x 2 seeds) -> {tmp_path / 'out'}"
    assert lines[1].split() == ["run", "id", "variant", "seed", "state", "action"]
    assert sum("coupling=affine" in line and "pending" in line for line in lines) == 2
    assert lines[-1] == "would train 4 of 4 runs"
    assert not (tmp_path / "out").exists()


def test_dry_run_shows_what_is_done(tmp_path):
    study, results = make_study(tmp_path, seeds=(0,)), tmp_path / "results"
    run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train, only=["width=12"]))
    result = cli("run", study, "--results", results, "--dry-run")
    rows = {line.split()[1]: line.split()[-2:] for line in result.output.splitlines()[2:-1]}
    assert rows == {"width=12": ["done", "skip"], "width=16": ["pending", "train"]}
    assert result.output.splitlines()[-1] == "would train 1 of 2 runs"


BAD = {
    "unknown axis key": ("name: t\nseeds: [0]\ngrid:\n  model.depht: [2, 4]\n", "model.depht: unknown key"),
    "empty grid axis": ("name: t\nseeds: [0]\ngrid:\n  model.depth: []\n", "axis model.depth is empty"),
    "bad seeds": ("name: t\nseeds: [1, 1]\n", "seeds must be distinct"),
    "yaml error": ("name: t\nseeds: [0\n", "YAML syntax error"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_files_give_one_line_errors(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = cli("run", path)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {path}")
    assert expected in result.output and "Traceback" not in result.output


def test_missing_study_file_and_swept_set_are_user_errors(tmp_path):
    missing = cli("run", tmp_path / "nope.yaml")
    assert missing.exit_code == 2 and "nope.yaml: no such file" in missing.output
    swept = cli("run", SMOKE, "--set", "model.coupling=affine", "--dry-run")
    assert swept.exit_code == 2 and "model.coupling is swept" in swept.output


def test_launcher_options_are_checked_before_anything_is_written(tmp_path):
    bad_time = cli("run", SMOKE, "--results", tmp_path / "a", "--time", "soon")
    assert bad_time.exit_code == 2 and "--processes-per-run: time: must be minutes" in bad_time.output
    two_per_gpu = cli("run", SMOKE, "--results", tmp_path / "c", "--gpus", "1", "--processes-per-run", "2")
    assert two_per_gpu.exit_code == 2
    assert "processes_per_run=2 needs gpus_per_node 2 (one GPU per process) or 0 (CPU), got 1" in two_per_gpu.output
    if shutil.which("sbatch") is None:
        no_slurm = cli("run", SMOKE, "--results", tmp_path / "b", "--launcher", "slurm")
        assert no_slurm.exit_code == 2 and "needs SLURM (no sbatch on PATH)" in no_slurm.output
    assert not any(tmp_path.iterdir())


def test_status_table_and_counts(tmp_path):
    study, results = make_study(tmp_path, widths=(12, FAIL_WIDTH), seeds=(0,)), tmp_path / "results"
    run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    result = cli("status", results)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["run", "id", "variant", "seed", "state", "step", "test", "bpd", "wall"]
    done = next(line for line in lines if "width=12" in line).split()
    assert done[1:] == ["width=12", "0", "done", "3", "7.000", "0m00s"]
    assert "1 runs" not in result.output and "2 runs: 1 done, 1 failed" in result.output
    assert "boom at width 13" in result.output
    assert f"tables: {results / 'tables'}/" in result.output


def test_run_names_the_tables_and_the_failures_then_exits_1(tmp_path, monkeypatch):
    monkeypatch.setattr("glow_repro.study.launchers.execute._default_train", lambda: fake_train)
    study, results = make_study(tmp_path, widths=(12, FAIL_WIDTH), seeds=(0,)), tmp_path / "results"
    result = cli("run", study, "--results", results, "--launcher", "inprocess")
    assert result.exit_code == 1, result.output
    assert f"tables: {results / 'tables'}/ (steps, evals, finals, events" in result.output
    assert "boom at width 13" in result.output
    assert (results / "tables" / "finals.parquet").is_file()


def test_status_of_a_directory_that_is_not_a_results_dir(tmp_path):
    result = cli("status", tmp_path)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path}: not a results directory")
    assert result.output.count("\n") == 1


def glow_repro(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "glow_repro", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    return out


@pytest.mark.slow
def test_smoke_study_trains_for_real_and_reruns_only_what_is_missing(tmp_path):
    results = tmp_path / "smoke"
    out = finished(glow_repro("run", SMOKE, "--results", results, "--workers", "2"))
    assert "smoke: 4 done (4 trained now, 0 already finished)" in out
    runs = sorted((results / "runs").iterdir())
    assert all(RunDir(r).summary()["final_test_bpd"] > 0 for r in runs)

    out = finished(glow_repro("run", SMOKE, "--results", results, "--workers", "2"))
    assert "smoke: 4 done (0 trained now, 4 already finished)" in out

    before = {r.name: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    (runs[1] / "status.json").unlink()
    out = finished(glow_repro("run", SMOKE, "--results", results, "--workers", "2"))
    assert "smoke: 4 done (1 trained now, 3 already finished)" in out
    after = {r.name: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    assert [name for name in before if before[name] != after[name]] == [runs[1].name]

    status = finished(glow_repro("status", results))
    assert "4 runs: 4 done" in status
    assert f"tables: {results / 'tables'}/" in out and f"tables: {results / 'tables'}/" in status
    finals = pd.read_parquet(results / "tables" / "finals.parquet")
    assert sorted(finals["run_id"]) == [r.name for r in runs] and (finals["final_test_bpd"] > 0).all()


@pytest.mark.slow
def test_sigkill_mid_study_then_rerun_completes_without_duplicate_rows(tmp_path):
    results = tmp_path / "smoke"
    steps = 80
    args = ("run", SMOKE, "--results", results, "--workers", "2", "--set", f"train.steps={steps}")
    proc = glow_repro(*args)
    deadline = time.monotonic() + 240
    while not any(RunDir(r).status().get("step", 0) >= 10 for r in (results / "runs").glob("*")):
        assert proc.poll() is None and time.monotonic() < deadline, "study ended before the kill"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # The workers die with the runner (PR_SET_PDEATHSIG): wait until none holds a run.
    runs = list((results / "runs").iterdir())
    while any(RunLock(r).held_elsewhere() for r in runs):
        assert time.monotonic() < deadline, "a worker outlived the killed runner"
        time.sleep(0.1)
    assert any(RunDir(r).status()["state"] != "done" for r in runs)

    out = finished(glow_repro(*args))
    assert "smoke: 4 done" in out
    for run in (results / "runs").iterdir():
        logged = [row["step"] for row in RunDir(run).metrics.read()]
        assert logged == list(range(1, steps + 1)), run.name
        evals = [row["step"] for row in RunDir(run).evals.read()]
        assert len(evals) == len(set(evals)), run.name
    manifest = json.loads((results / "manifest.json").read_text())
    assert len(manifest["runs"]) == 4
    assert yaml.safe_load((results / "study.yaml").read_text())["base"]["train"]["steps"] == steps


def test_the_run_summary_accounts_for_every_run(tmp_path, monkeypatch):
    monkeypatch.setattr("glow_repro.study.launchers.execute._default_train", lambda: fake_train)
    study, results = make_study(tmp_path, widths=(12, FAIL_WIDTH), seeds=(0, 1)), tmp_path / "results"
    cli("run", study, "--results", results, "--launcher", "inprocess")
    again = cli("run", study, "--results", results, "--launcher", "inprocess")
    assert (
        "fake: 2 done, 2 failed (0 trained now, 2 already finished, 2 failed before (--retry-failed trains them))"
        in again.output
    )


def test_status_dates_the_bpd_of_a_run_that_is_not_done(tmp_path):
    study, results = make_study(tmp_path, widths=(12,), seeds=(0,)), tmp_path / "results"
    run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    (run,) = (results / "runs").iterdir()
    # diverged before its first evaluation after step 0: the step-0 bpd is no result of training
    (run / "summary.json").unlink()
    (run / "evals.jsonl").write_text('{"step": 0, "test_bpd": 8.5}\n')
    (run / "status.json").write_text('{"state": "diverged", "step": 2}')
    row = next(line for line in cli("status", results).output.splitlines() if "width=12" in line).split()
    assert row[3:7] == ["diverged", "2", "8.500", "@0"]


def test_a_diverged_run_is_reported_by_its_step_not_its_last_evaluation(capsys):
    from glow_repro.core.config import RunConfig
    from glow_repro.study.launchers import Outcome, Progress, RunTask

    task = RunTask("r-s0", "width=12", 0, RunConfig(), "runs/r-s0")
    summary = {"state": "diverged", "step": 7, "final_test_bpd": 8.5, "first_nonfinite_step": 7}
    with Progress([task], desc="fake", slots=1) as progress:
        progress.show(Outcome("r-s0", RunState.DIVERGED, summary=summary))
    line = next(line for line in capsys.readouterr().out.splitlines() if "r-s0" in line)
    assert line.endswith(": diverged at step 7") and "8.5" not in line
