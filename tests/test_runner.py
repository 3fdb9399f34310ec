"""The study runner with a fake train function: skipping, resuming, failures, locks, launchers.
Real-training end-to-end tests are in test_study_cli.py (marked slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from glow_repro.core.config import ConfigError, dump_run_config
from glow_repro.errors import DataUnavailableError, ResultsDirError
from glow_repro.run.rundir import RunDir, RunLock, RunState, atomic_write_json, atomic_write_text
from glow_repro.study.launchers import Outcome
from glow_repro.study.runner import StudyOptions, StudyReport, collect_status, run_study, tables_dir

ROOT = Path(__file__).resolve().parents[1]

FAIL_WIDTH, CRASH_WIDTH, SLOW_WIDTH = 13, 14, 15


def fake_train(config, run_dir, *, threads=None, progress=None):
    """Stands in for glow_repro.run.train.train: same files, no torch. ``model.width`` picks a
    behaviour: 13 raises, 14 kills its own process, 15 is slow (0.03 s per step)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.path / "calls.txt", "a") as calls:
        calls.write(f"{os.getpid()} threads={threads} progress={progress}\n")
    if not run.config.exists():
        atomic_write_text(run.config, dump_run_config(config))
    run.write_status("running", step=run.status().get("step", 0))
    width = config.model.width
    if width == FAIL_WIDTH:
        raise RuntimeError(f"boom at width {width}")
    if width == CRASH_WIDTH:
        os.kill(os.getpid(), signal.SIGKILL)
    logged = {row["step"] for row in run.metrics.read()}
    steps = config.train.steps
    for step in range(1, steps + 1):
        if step in logged:
            continue
        if width == SLOW_WIDTH:
            time.sleep(0.03)
        run.metrics.append({"step": step, "train_bpd": 8.0 - step / 100})
        run.write_status("running", step=step)
    run.evals.append({"step": steps, "test_bpd": 7.0 + config.seed / 10})
    summary = {"state": "done", "step": steps, "final_test_bpd": 7.0 + config.seed / 10, "wall_time": 0.5}
    atomic_write_json(run.summary_file, summary)
    run.write_status("done", step=steps)
    return summary


def make_study(tmp_path: Path, widths=(12, 16), seeds=(0, 1), steps=3, name="fake") -> Path:
    spec = {
        "name": name,
        "reference": "none",
        "base": {"data": {"dataset": "synthetic"}, "model": {"depth": 1, "levels": 1}, "train": {"steps": steps}},
        "grid": {"model.width": list(widths)},
        "seeds": list(seeds),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def calls(results: Path) -> dict[str, int]:
    """How many times train was called per run."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in sorted((results / "runs").glob("*/calls.txt"))}


def test_study_trains_every_run_then_a_rerun_trains_nothing(tmp_path):
    results = tmp_path / "results"
    report = run_study(make_study(tmp_path), results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    assert report.counts == {"done": 4, "trained": 4, "skipped": 0}
    assert set(calls(results).values()) == {1}
    assert (results / "study.yaml").is_file()
    manifest = yaml.safe_load((results / "manifest.json").read_text())
    assert {e["variant"] for e in manifest["runs"].values()} == {"width=12", "width=16"}

    again = run_study(make_study(tmp_path), results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    assert again.counts == {"done": 4, "trained": 0, "skipped": 4}
    assert set(calls(results).values()) == {1}

    victim = sorted((results / "runs").iterdir())[0]
    (victim / "status.json").unlink()
    third = run_study(make_study(tmp_path), results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    assert third.counts["trained"] == 1
    assert calls(results)[victim.name] == 2 and sum(calls(results).values()) == 5
    steps = [row["step"] for row in RunDir(victim).metrics.read()]
    assert steps == [1, 2, 3]  # resumed, no duplicated rows


def test_the_long_tables_are_written_at_the_end_failed_runs_included(tmp_path):
    results = tmp_path / "results"
    report = run_study(
        make_study(tmp_path, widths=(12, FAIL_WIDTH)), results, StudyOptions(launcher="inprocess", train_fn=fake_train)
    )
    assert report.tables_dir == results / "tables" == tables_dir(results)
    for name in ("steps", "evals", "finals", "events"):
        assert (results / "tables" / f"{name}.csv").is_file(), name
    finals = pd.read_parquet(results / "tables" / "finals.parquet")
    assert sorted(finals["run_id"]) == sorted(p.name for p in (results / "runs").iterdir())
    assert sorted(finals["state"]) == ["done", "done", "failed", "failed"]
    assert len(pd.read_parquet(results / "tables" / "steps.parquet")) == 2 * 3  # done runs only


def interrupted_train(config, run_dir, **kwargs):
    """Ctrl-C during the first run's training (its config is written by then)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, dump_run_config(config))
    raise KeyboardInterrupt


def train_without_data(config, run_dir, **kwargs):
    """train() when the dataset is missing: it raises before writing the run's config."""
    raise DataUnavailableError("fashion-mnist: no files")


@pytest.mark.parametrize("train_fn, state", [(interrupted_train, "interrupted"), (train_without_data, "failed")])
def test_no_tables_after_ctrl_c_or_when_no_run_started(tmp_path, train_fn, state):
    results = tmp_path / "results"
    report = run_study(make_study(tmp_path), results, StudyOptions(launcher="inprocess", train_fn=train_fn))
    assert report.runs_in(state) and report.tables_dir is None
    assert not (results / "tables").exists() and tables_dir(results) is None


@pytest.mark.slow  # worker processes, each importing torch
def test_local_pool_runs_in_worker_processes_with_split_threads(tmp_path):
    results = tmp_path / "results"
    report = run_study(make_study(tmp_path), results, StudyOptions(workers=2, train_fn=fake_train))
    assert report.counts["done"] == 4 and not report.interrupted
    lines = [line for p in (results / "runs").glob("*/calls.txt") for line in p.read_text().splitlines()]
    pids = {line.split()[0] for line in lines}
    assert str(os.getpid()) not in pids and len(pids) == 4  # one fresh process per run
    cores = len(os.sched_getaffinity(0))
    assert {line.split()[1] for line in lines} == {f"threads={max(1, cores // 2)}"}
    assert {line.split()[2] for line in lines} == {"progress=False"}


@pytest.mark.slow  # worker processes, each importing torch
def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path):
    results = tmp_path / "results"
    study = make_study(tmp_path, widths=(12, FAIL_WIDTH))
    report = run_study(study, results, StudyOptions(workers=2, train_fn=fake_train))
    assert report.counts["done"] == 2 and report.counts["failed"] == 2
    failed = report.runs_in("failed")[0]
    status = RunDir(failed.run_dir).status()
    assert status["state"] == "failed"
    assert status["error"] == "RuntimeError: boom at width 13" and "Traceback" in status["traceback"]
    assert report.outcomes[failed.run.run_id].error == status["error"]

    kept = run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    assert kept.counts == {"done": 2, "failed": 2, "trained": 0, "skipped": 2}
    retried = run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train, retry_failed=True))
    assert retried.counts["trained"] == 2 and retried.counts["failed"] == 2


@pytest.mark.slow  # worker processes, each importing torch
def test_a_worker_killed_mid_run_fails_that_run_only(tmp_path):
    results = tmp_path / "results"
    report = run_study(
        make_study(tmp_path, widths=(12, CRASH_WIDTH), seeds=(0,)),
        results,
        StudyOptions(workers=2, train_fn=fake_train),
    )
    assert report.counts["done"] == 1 and report.counts["failed"] == 1
    crashed = report.runs_in("failed")[0]
    assert "worker process died" in RunDir(crashed.run_dir).status()["error"]


@pytest.mark.slow  # worker processes, each importing torch
def test_a_run_locked_by_another_process_is_skipped(tmp_path):
    results = tmp_path / "results"
    study = make_study(tmp_path)
    plan = run_study(study, results, StudyOptions(dry_run=True)).plan
    held = plan[0].run_dir
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from glow_repro.run.rundir import RunLock
            lock = RunLock({str(held)!r})
            assert lock.acquire()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        RunDir(held).write_status("running", step=1)
        report = run_study(study, results, StudyOptions(workers=2, train_fn=fake_train))
        assert report.counts["elsewhere"] == 1 and report.counts["done"] == 3
        assert plan[0].run.run_id not in calls(results)
    finally:
        holder.kill()
        holder.wait()
    assert not RunLock(held).held_elsewhere()  # SIGKILL left no stuck lock
    report = run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    assert report.counts == {"done": 4, "trained": 1, "skipped": 3}


def test_the_lock_is_taken_at_launch_time_too(tmp_path):
    """A run locked after planning (another runner started it) is left alone."""
    results = tmp_path / "results"
    study = make_study(tmp_path, widths=(12,), seeds=(0,))
    run_dir = run_study(study, results, StudyOptions(dry_run=True)).plan[0].run_dir
    lock = RunLock(run_dir)
    assert lock.acquire()
    try:
        report = run_study(study, results, StudyOptions(launcher="inprocess", train_fn=fake_train))
    finally:
        lock.release()
    assert report.counts["elsewhere"] == 1 and not calls(results)


def test_only_filters_runs(tmp_path):
    results = tmp_path / "results"
    study = make_study(tmp_path)
    plan = run_study(study, results, StudyOptions(only=["width=16", "seed=1"], dry_run=True)).plan
    assert [(p.run.overrides["model.width"], p.run.seed) for p in plan] == [(16, 1)]
    both = run_study(study, results, StudyOptions(only=["model.width=12", "model.width=16.0"], dry_run=True)).plan
    assert len(both) == 4
    with pytest.raises(ConfigError, match=r"--only depth=3: no run matches|no run matches"):
        run_study(study, results, StudyOptions(only=["model.depth=3"], dry_run=True))
    with pytest.raises(ConfigError, match=r"--only colour=red: unknown key colour; swept keys: model.width"):
        run_study(study, results, StudyOptions(only=["colour=red"], dry_run=True))
    assert not results.exists()  # dry runs write nothing


def test_submitit_debug_executor_runs_the_study(tmp_path):
    results = tmp_path / "results"
    report = run_study(
        make_study(tmp_path, widths=(12, FAIL_WIDTH), seeds=(0,)),
        results,
        StudyOptions(launcher="submitit-debug", train_fn=fake_train),
    )
    assert report.counts["done"] == 1 and report.counts["failed"] == 1


@pytest.mark.slow  # worker processes, each importing torch
def test_submitit_local_executor_runs_the_study(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    results = tmp_path / "results"
    report = run_study(
        make_study(tmp_path, seeds=(0,)),
        results,
        StudyOptions(launcher="submitit-local", train_fn=fake_train, resources={"time": "0:10:00"}),
    )
    assert report.counts["done"] == 2, report.outcomes
    assert any((results / "submitit").iterdir())


def test_status_reads_every_run(tmp_path):
    results = tmp_path / "results"
    run_study(
        make_study(tmp_path, widths=(12, FAIL_WIDTH), seeds=(0,)),
        results,
        StudyOptions(launcher="inprocess", train_fn=fake_train),
    )
    rows = {row.variant: row for row in collect_status(results)}
    assert rows["width=12"].state == "done" and rows["width=12"].test_bpd == 7.0
    assert rows["width=12"].step == 3 and rows["width=12"].wall_time == 0.5
    assert rows["width=13"].state == "failed" and "boom" in rows["width=13"].error
    run_dir = RunDir(results / "runs" / rows["width=12"].run_id)
    run_dir.write_status("running", step=2)  # as a SIGKILLed runner leaves it
    assert {row.variant: row.state for row in collect_status(results)}["width=12"] == "killed"
    with pytest.raises(ResultsDirError, match="not a results directory"):
        collect_status(tmp_path)  # the study's parent: no manifest.json, no runs/


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_interrupts_workers_and_keeps_their_runs_resumable(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    results = tmp_path / "results"
    study = make_study(tmp_path, widths=(SLOW_WIDTH, 16), seeds=(0, 1, 2), steps=100)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_runner import fake_train
        from glow_repro.study.runner import StudyOptions, run_study
        report = run_study({str(study)!r}, {str(results)!r}, StudyOptions(workers=2, train_fn=fake_train))
        print("interrupted" if report.interrupted else "finished", report.counts, flush=True)
        sys.exit(130 if report.interrupted else 0)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def statuses():
        return [RunDir(p).status() for p in (results / "runs").glob("*")]

    _wait_for(lambda: sum(s.get("state") == "running" and s.get("step", 0) > 2 for s in statuses()) >= 2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert out.startswith("interrupted")
    states = sorted(s["state"] for s in statuses())
    assert "interrupted" in states and "running" not in states
    assert len(states) < 6  # the queued runs never started
    report = run_study(study, results, StudyOptions(workers=2, train_fn=fake_train))
    assert report.counts["done"] == 6
    for run_dir in (results / "runs").iterdir():
        steps = [row["step"] for row in RunDir(run_dir).metrics.read()]
        assert steps == list(range(1, 101))


def test_training_cpu_seconds_reads_what_each_trained_run_recorded(tmp_path):
    """Wall time from summary.json, else the last logged step; times threads x processes from
    environment.json. Runs not trained now are left out; so is a run stopped before its first
    logged step (nothing spent); one without a readable thread count is counted as such."""
    runs = tmp_path / "runs"
    records = {
        "done": ({"wall_time": 10.0}, [], {"threads": 2}),  # 20 CPU-seconds
        "failed": ({}, [{"step": 1, "wall_time": 1.0}, {"step": 2, "wall_time": 5.0}], {"threads": 1, "world_size": 3}),
        "at-start": ({}, [], {"threads": 4}),  # failed before its first step: nothing spent
        "no-threads": ({"wall_time": 7.0}, [], None),
        "damaged": ({"wall_time": 7.0}, [], "{not json"),
        "cancelled": ({"wall_time": 100.0}, [], {"threads": 8}),
        "elsewhere": ({"wall_time": 100.0}, [], {"threads": 8}),
    }
    for run_id, (summary, steps, environment) in records.items():
        run = RunDir(runs / run_id)
        run.path.mkdir(parents=True)
        if summary:
            atomic_write_json(run.summary_file, summary)
        for row in steps:
            run.metrics.append(row)
        if isinstance(environment, dict):
            atomic_write_json(run.environment, environment)
        elif environment is not None:
            run.environment.write_text(environment)
    states = {"cancelled": RunState.CANCELLED, "elsewhere": RunState.ELSEWHERE, "failed": RunState.FAILED}
    report = StudyReport(spec=None, results_dir=tmp_path, plan=[])
    report.outcomes = {run_id: Outcome(run_id, states.get(run_id, RunState.DONE)) for run_id in records}
    assert report.training_cpu_seconds() == (20.0 + 15.0, 2)
