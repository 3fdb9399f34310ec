"""Crash-safe writers, logs and states of the run directory."""

from __future__ import annotations

import json
import os
import stat

import pytest

from glow_repro.rundir import JsonlLog, RunDir, RunState, atomic_write_text


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "first")
        atomic_write_text(tmp_path / "a.txt", "second")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "second"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind


def test_jsonl_log_skips_a_torn_last_line_and_truncates_to_a_step(tmp_path):
    log = JsonlLog(tmp_path / "m.jsonl")
    log.extend([{"step": 1, "v": 1.0}, {"step": 2, "v": 2.0}, {"step": 3, "v": 3.0}])
    with open(log.path, "a") as handle:
        handle.write('{"step": 4, "v"')  # a kill in the middle of an append
    assert [row["step"] for row in log.read()] == [1, 2, 3]
    log.truncate_after(2)
    assert log.path.read_text() == '{"step": 1, "v": 1.0}\n{"step": 2, "v": 2.0}\n'


def test_status_of_a_run_never_started_is_pending(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.status() == {"state": "pending"} and not run.is_finished()
    run.path.mkdir()
    run.write_status("diverged", step=7)
    assert run.status()["state"] == "diverged" and run.status()["step"] == 7 and run.is_finished()


def test_run_states_keep_their_strings_and_say_what_the_runner_does():
    assert [s.value for s in RunState if s.recorded] == ["done", "diverged", "running", "interrupted", "failed",
                                                        "pending"]
    assert {s for s in RunState if s.finished} == {RunState.DONE, RunState.DIVERGED}
    actions = {state.value: state.action(retry_failed=False) for state in RunState}
    assert actions == {"done": "skip", "diverged": "skip", "running": "elsewhere", "elsewhere": "elsewhere",
                       "killed": "resume", "interrupted": "resume", "failed": "keep-failed",
                       "pending": "train", "cancelled": "resume", "unreadable": "unreadable"}
    assert RunState.FAILED.action(retry_failed=True) == "retry"
    assert RunState.display_order(["pending", "failed", "done", "pending"]) == ["done", "failed", "pending"]
    assert json.loads(json.dumps({"state": RunState.DONE})) == {"state": "done"}


def test_only_recorded_states_are_written(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_status(RunState.INTERRUPTED, step=3)
    assert run.state() is RunState.INTERRUPTED and run.status()["state"] == "interrupted"
    with pytest.raises(ValueError, match="unknown run state 'killed'"):
        run.write_status("killed")
