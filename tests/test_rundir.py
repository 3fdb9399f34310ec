"""Crash-safe writers, logs and states of the run directory."""

from __future__ import annotations

import json
import os
import re
import socket
import stat

import pytest

from glow_repro.run.rundir import (
    JsonlLog,
    RunDir,
    RunLock,
    RunState,
    StudyDir,
    UnreadableFileError,
    atomic_write_text,
    read_json,
)


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
    assert [s.value for s in RunState if s.recorded] == [
        "done",
        "diverged",
        "running",
        "interrupted",
        "failed",
        "pending",
    ]
    assert {s for s in RunState if s.finished} == {RunState.DONE, RunState.DIVERGED}
    actions = {state.value: state.action(retry_failed=False) for state in RunState}
    assert actions == {
        "done": "skip",
        "diverged": "skip",
        "running": "elsewhere",
        "elsewhere": "elsewhere",
        "killed": "resume",
        "interrupted": "resume",
        "failed": "keep-failed",
        "pending": "train",
        "cancelled": "resume",
        "unreadable": "unreadable",
    }
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


def test_reading_layer_names_the_file_for_damage_and_wrong_shapes(tmp_path):
    path = tmp_path / "x.json"
    assert read_json(path, default="none") == "none"
    for data, expected in [
        (b'{"a": \xff}', "not UTF-8 text (byte 0xff at offset 6)"),
        (b'{"a": ', "not valid JSON"),
        (b"[1]", "holds a list where an object belongs"),
    ]:
        path.write_bytes(data)
        with pytest.raises(UnreadableFileError, match=re.escape(expected)) as caught:
            read_json(path, expect=dict)
        assert str(caught.value).startswith(f"{path}: ")


def test_a_damaged_line_inside_a_log_is_an_error_and_only_a_torn_last_line_is_skipped(tmp_path):
    log = JsonlLog(tmp_path / "m.jsonl")
    log.path.write_bytes(b'{"step": 1}\n{"step": 2, \xff}\n{"step": 3}\n')
    with pytest.raises(UnreadableFileError, match=r"m\.jsonl: line 2 is not JSON"):
        log.read()
    log.path.write_bytes(b'{"step": 1}\n["a list"]\n')
    with pytest.raises(UnreadableFileError, match="line 2 is not a row of this log"):
        log.read()
    log.path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"st')
    assert log.scan() == ([{"step": 1}, {"step": 2}], True)
    assert log.truncate_after(1) is True and log.scan() == ([{"step": 1}], False)


def test_a_damaged_status_is_unreadable_with_the_reason(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for text in ('{"state": "do', '["done"]', '{"state": "finished"}', '{"state": "done", "step": "7"}'):
        run.status_file.write_text(text)
        assert run.state() is RunState.UNREADABLE and str(run.status_file) in run.status()["error"]


def test_stale_temporaries_are_removed_and_named(tmp_path):
    run = RunDir(tmp_path / "run")
    run.samples.mkdir(parents=True)
    (run.path / ".checkpoint.pt.abc.tmp").write_text("half")
    (run.samples / ".temperatures.png.x.tmp").write_text("half")
    (run.path / "metrics.jsonl").write_text("")
    assert run.remove_stale_temporaries() == [".checkpoint.pt.abc.tmp", "samples/.temperatures.png.x.tmp"]
    assert sorted(p.name for p in run.path.iterdir()) == ["metrics.jsonl", "samples"]


def test_the_lock_names_its_holder_and_is_free_after_release(tmp_path):
    held, other = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    assert held.acquire() and held.held_here()
    assert not other.acquire() and other.held_elsewhere()
    assert other.holder() == f"pid {os.getpid()} on {socket.gethostname()}"
    held.release()
    assert not other.held_here() and not other.held_elsewhere() and other.holder() == "another process"


def test_study_dir_names_a_studys_files(tmp_path):
    study = StudyDir(str(tmp_path / "s"))
    named = {
        study.study_file: "study.yaml", study.manifest: "manifest.json", study.runs: "runs",
        study.tables: "tables", study.manipulations: "manipulations", study.submitit: "submitit",
        study.decisions: "decisions.jsonl", study.manifest_lock: ".manifest.lock",
        study.decisions_lock: ".decisions.lock", study.tables_lock: ".tables.lock",
    }  # fmt: skip
    assert {path: str(path.relative_to(tmp_path / "s")) for path in named} == named
    assert study.manipulation("width_16") == tmp_path / "s" / "manipulations" / "width_16"
    assert isinstance(study.run("abc-s0"), RunDir) and study.run("abc-s0").path == tmp_path / "s" / "runs" / "abc-s0"
    assert study.run_dirs() == []  # no runs/ yet
    for run_id in ("b-s1", "a-s0"):
        study.run(run_id).path.mkdir(parents=True)
    (study.runs / "notes.txt").write_text("not a run")
    assert [run.path.name for run in study.run_dirs()] == ["a-s0", "b-s1"]
