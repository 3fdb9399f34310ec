"""Faults and mistakes a careful user meets, tried through the CLI: each must end in one clear
line (or the right result), never a traceback, a hang or lost history.

The tests are grouped by the class of failure they guard against (the prefix of their
names): ``history`` (records lost or silently rewritten), ``wrong`` (a wrong result or a
hang), ``traceback`` (a raw traceback for a damaged file or a bad value), ``unclear`` (a
misleading or missing message) and ``corruption`` (random damage of every file a finished
run holds, fed to ``status``, ``report``, ``run`` and ``sample``).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.core.config import RunConfig, dump_run_config
from glow_repro.run.rundir import RunDir, RunLock, atomic_write_text
from glow_repro.run.train import train
from glow_repro.study.runner import StudyOptions, run_study

ROOT = Path(__file__).resolve().parents[1]

#: A run that trains in well under a second on one CPU thread.
TINY = {
    "data": {"dataset": "synthetic", "synthetic_size": 32},
    "model": {"depth": 1, "levels": 1, "width": 4},
    "train": {
        "steps": 4,
        "batch_size": 8,
        "eval_every": 2,
        "checkpoint_every": 2,
        "progress": False,
        "n_samples": 2,
        "init_images": 8,
        "eval_batch_size": 32,
        "sample_temperatures": [0.7],
        "threads": 1,
    },
}


def tiny(**train_values) -> dict:
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(train_values)
    return raw


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)


def assert_one_line(result, *expected: str, code: int = 2) -> str:
    """The command failed with exit ``code`` and one ``error:`` line holding ``expected``."""
    assert_no_traceback(result)
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the lock files aside) and its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.startswith(".lock")
    }


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results directory of a one-run study, trained to the end."""
    home = tmp_path_factory.mktemp("finished")
    study = write_yaml(home / "tiny.yaml", {"name": "tiny", "base": tiny(), "seeds": [0]})
    report = run_study(study, home / "results", StudyOptions(launcher="inprocess"))
    assert report.counts["done"] == 1, report.outcomes
    return home


@pytest.fixture
def study(finished, tmp_path) -> tuple[Path, Path, RunDir]:
    """A private copy of the finished study: (study file, results dir, its one run)."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    results = tmp_path / "results"
    run = RunDir(next((results / "runs").iterdir()))
    return tmp_path / "tiny.yaml", results, run


def run_config_file(tmp_path: Path, raw: dict) -> Path:
    return write_yaml(tmp_path / "run.yaml", raw)


# -- lost history --------------------------------------------------------------------------------


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds the run's lock until killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from glow_repro.run.rundir import RunLock
            lock = RunLock({str(run_dir)!r})
            assert lock.acquire()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_history_a_second_trainer_of_one_run_is_refused_and_names_the_holder(study, tmp_path):
    _, _, run = study
    config = run_config_file(tmp_path, yaml.safe_load(run.config.read_text()))
    before = snapshot(run.path)
    holder = hold_lock(run.path)
    try:
        result = cli("train", config, "--out", run.path)
    finally:
        holder.kill()
        holder.wait()
    assert_one_line(result, str(run.path), f"pid {holder.pid}")
    assert snapshot(run.path) == before


def test_history_a_finished_run_without_its_checkpoint_is_refused(study, tmp_path):
    _, _, run = study
    config = run_config_file(tmp_path, yaml.safe_load(run.config.read_text()))
    run.checkpoint.unlink()
    before = snapshot(run.path)
    assert_one_line(cli("train", config, "--out", run.path), "checkpoint.pt", "finished")
    assert snapshot(run.path) == before


def test_unclear_sampling_a_finished_run_without_its_checkpoint_says_restore_not_wait(study, tmp_path):
    _, _, run = study
    run.checkpoint.unlink()
    before = snapshot(run.path)
    line = assert_one_line(cli("sample", run.path, "--out", tmp_path / "s"), str(run.path), "checkpoint.pt", "backup")
    assert "once training" not in line
    assert snapshot(run.path) == before and not (tmp_path / "s").exists()


def _half_trained(tmp_path: Path) -> tuple[Path, RunDir]:
    """A run trained to step 2 of 4 whose config asks for 4: the next ``train`` resumes it."""
    out = RunDir(tmp_path / "run")
    train(RunConfig.model_validate(tiny(steps=2)), out.path)
    out.config.write_text(dump_run_config(RunConfig.model_validate(tiny())))
    out.write_status("interrupted", step=2)
    return run_config_file(tmp_path, tiny()), out


def test_history_a_torn_last_line_dropped_on_resume_is_an_event(tmp_path):
    config, run = _half_trained(tmp_path)
    with open(run.metrics.path, "a") as handle:
        handle.write('{"step": 3, "train_')
    result = cli("train", config, "--out", run.path)
    assert result.exit_code == 0, result.output
    repairs = [e for e in run.events.read() if e["kind"] == "repair"]
    assert len(repairs) == 1 and "metrics.jsonl" in repairs[0]["detail"]
    assert [row["step"] for row in run.metrics.read()] == [1, 2, 3, 4]


def test_history_a_stale_temporary_file_is_removed_on_resume_as_an_event(tmp_path):
    config, run = _half_trained(tmp_path)
    stale = run.path / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = cli("train", config, "--out", run.path)
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    repairs = [e for e in run.events.read() if e["kind"] == "repair"]
    assert len(repairs) == 1 and stale.name in repairs[0]["detail"]


# -- wrong results and hangs ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_wrong_an_infinite_or_nan_learning_rate_is_refused(tmp_path, value):
    config = run_config_file(tmp_path, tiny())
    result = cli("train", config, "--out", tmp_path / "out", "--set", f"train.lr={value}")
    assert_one_line(result, "train.lr")
    assert not (tmp_path / "out").exists()


def test_wrong_a_damaged_status_is_shown_as_unreadable_not_pending(study):
    study_file, results, run = study
    run.status_file.write_bytes(b'{"state": "do\xff')
    status = cli("status", results)
    assert_no_traceback(status)
    assert "unreadable" in status.output and "pending" not in status.output
    dry = cli("run", study_file, "--results", results, "--dry-run")
    assert_no_traceback(dry)
    assert "unreadable" in dry.output and "would train 0 of 1 runs" in dry.output


def test_unclear_a_damaged_status_makes_run_exit_1_with_the_remedy(study):
    study_file, results, run = study
    run.status_file.write_bytes(b'{"state": "do\xff')
    before = snapshot(results / "runs")
    result = cli("run", study_file, "--results", results, "--workers", "1")
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("  unreadable: "))
    assert run.path.name in line and "status.json" in line and "delete it and run the study again" in line
    assert snapshot(results / "runs") == before


def read_only(monkeypatch, root: Path) -> None:
    """Opening or making anything under ``root`` for writing fails as on a read-only mount
    (checked by hand on a real one, which a test cannot mount)."""
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guarded_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(root)) and flags & writing:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)) and not os.path.isdir(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_wrong_status_and_dry_run_read_a_read_only_half_finished_study(study, monkeypatch):
    study_file, results, run = study
    run.write_status("running", step=2)  # killed mid-run: its lock file is there
    RunLock(run.path).acquire()
    RunLock(run.path).release()
    before = snapshot(results)
    read_only(monkeypatch, results)
    status = cli("status", results)
    assert status.exit_code == 0 and "1 runs: 1 killed" in status.output, status.output
    dry = cli("run", study_file, "--results", results, "--dry-run")
    assert dry.exit_code == 0 and "would train 1 of 1 runs" in dry.output, dry.output
    monkeypatch.undo()
    assert snapshot(results) == before


def test_wrong_another_study_with_the_same_name_is_refused_unless_forced(study, tmp_path):
    _, results, _ = study
    other = write_yaml(tmp_path / "other.yaml", {"name": "tiny", "base": tiny(lr=2e-3), "seeds": [0]})
    before = snapshot(results)
    assert_one_line(cli("run", other, "--results", results), str(results), "--force-spec")
    assert snapshot(results) == before
    forced = cli("run", other, "--results", results, "--force-spec", "--dry-run")
    assert forced.exit_code == 0, forced.output


def test_wrong_stability_events_after_a_resume_equal_an_uninterrupted_runs(tmp_path):
    """Spikes are judged against the running history, which the checkpoint must carry."""
    sensitive = {
        "spike_warmup": 5,
        "loss_spike_mads": 0.01,
        "loss_spike_relative": 0.0,
        "grad_spike_mads": 0.01,
        "grad_spike_relative": 0.0,
        "health_every": 0,
    }
    raw = {**tiny(steps=12, checkpoint_every=3, eval_every=6), "monitor": sensitive}
    whole, split = RunDir(tmp_path / "whole"), RunDir(tmp_path / "split")
    train(RunConfig.model_validate(raw), whole.path)
    half = json.loads(json.dumps(raw))
    half["train"]["steps"] = 9
    train(RunConfig.model_validate(half), split.path)
    split.config.write_text(dump_run_config(RunConfig.model_validate(raw)))
    train(RunConfig.model_validate(raw), split.path)
    drop = ("time", "run")

    def events(run: RunDir) -> list[dict]:
        return [{k: v for k, v in e.items() if k not in drop} for e in run.events.read()]

    assert events(whole), "the thresholds are meant to fire"
    assert events(split) == events(whole)


# -- tracebacks ----------------------------------------------------------------------------------

NOT_UTF8 = b"name: t\xff\xfe\n"


def test_traceback_non_utf8_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(NOT_UTF8)
    assert_one_line(cli("train", config, "--out", tmp_path / "out"), str(config), "UTF-8")


def test_traceback_non_utf8_study_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(NOT_UTF8)
    assert_one_line(cli("run", path, "--dry-run"), str(path), "UTF-8")


@pytest.mark.parametrize(
    "name", ["status.json", "summary.json", "metrics.jsonl", "evals.jsonl", "environment.json", "../../manifest.json"]
)
def test_traceback_non_utf8_run_records_for_status(study, name):
    _, results, run = study
    path = run.path / name
    path.write_bytes(path.read_bytes()[:5] + b"\xff\xfe" + path.read_bytes()[5:])
    assert_no_traceback(cli("status", results))


@pytest.mark.parametrize(
    "name", ["status.json", "summary.json", "metrics.jsonl", "environment.json", "config.yaml", "../../study.yaml"]
)
def test_traceback_non_utf8_run_records_for_report(study, tmp_path, name):
    _, results, run = study
    path = run.path / name
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    assert_no_traceback(cli("report", results, "--out", tmp_path / "report"))


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage", b"PK\x03\x04 not a zip"])
def test_traceback_damaged_checkpoint_for_sample_and_resume(study, tmp_path, content):
    _, _, run = study
    config = run_config_file(tmp_path, yaml.safe_load(run.config.read_text()))
    run.checkpoint.write_bytes(content)
    assert_one_line(cli("sample", run.path, "--out", tmp_path / "s"), "checkpoint.pt")
    before = snapshot(run.path)
    assert_one_line(cli("train", config, "--out", run.path), "checkpoint.pt")
    assert snapshot(run.path) == before


@pytest.mark.parametrize("content", ["garbage", "checkpoint"])
def test_traceback_damaged_or_foreign_capsule_for_replay(study, tmp_path, content):
    _, _, run = study
    capsule = tmp_path / "step_0000003.pt"
    if content == "checkpoint":
        shutil.copy(run.checkpoint, capsule)
    else:
        capsule.write_bytes(b"\x00garbage")
    assert_one_line(cli("replay", capsule), str(capsule))


@pytest.mark.parametrize(
    "name, text",
    [
        ("status.json", "[1, 2]"),
        ("summary.json", '"done"'),
        ("../../manifest.json", "[]"),
        ("../../manifest.json", '{"runs": [1]}'),
        ("metrics.jsonl", "[1, 2]\n"),
        ("evals.jsonl", '{"step": "x"}\n'),
        ("environment.json", "3"),
    ],
)
def test_traceback_json_of_the_wrong_shape(study, tmp_path, name, text):
    study_file, results, run = study
    (run.path / name).write_text(text)
    assert_no_traceback(cli("status", results))
    assert_no_traceback(cli("report", results, "--out", tmp_path / "report"))
    assert_no_traceback(cli("run", study_file, "--results", results, "--dry-run"))


def test_traceback_an_out_path_under_a_file(tmp_path):
    config = run_config_file(tmp_path, tiny())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line(cli("train", config, "--out", blocker / "run"), str(blocker))


def test_traceback_a_report_out_path_under_a_file(study, tmp_path):
    _, results, _ = study
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line(cli("report", results, "--out", blocker / "report"), str(blocker))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_traceback_disk_full_or_read_only_while_writing_leaves_what_was_written(study, tmp_path, monkeypatch, code):
    _, results, _ = study
    before = snapshot(results)

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    other = write_yaml(tmp_path / "more.yaml", {"name": "tiny", "base": tiny(), "seeds": [0, 1]})
    result = cli("run", other, "--results", results, "--force-spec")
    monkeypatch.undo()
    assert_one_line(result, os.strerror(code))
    assert {k: v for k, v in snapshot(results).items() if k in before} == before


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("seed", 2**40, "seed"),
        ("model.width", 10**9, "model.width"),
        ("model.depth", 10**6, "model.depth"),
        ("train.batch_size", 10**9, "train.batch_size"),
        ("data.synthetic_size", 10**10, "data.synthetic_size"),
    ],
)
def test_traceback_huge_values_are_refused_at_the_start(tmp_path, key, value, allowed):
    config = run_config_file(tmp_path, tiny())
    result = cli("train", config, "--out", tmp_path / "out", "--set", f"{key}={value}")
    assert_one_line(result, allowed)
    assert not (tmp_path / "out").exists()


def test_traceback_empty_sample_temperatures_fail_before_training(tmp_path):
    config = run_config_file(tmp_path, tiny(sample_temperatures=[]))
    assert_one_line(cli("train", config, "--out", tmp_path / "out"), "train.sample_temperatures")
    assert not (tmp_path / "out").exists()


# -- unclear messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_unclear_an_empty_config_is_refused(tmp_path, text):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert_one_line(cli("train", config, "--out", tmp_path / "out"), str(config), "empty")
    assert not (tmp_path / "out").exists()


def test_unclear_an_empty_study_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("")
    assert_one_line(cli("run", path, "--dry-run"), str(path), "empty")


def test_unclear_duplicate_keys_in_a_config_are_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 0.001\n  steps: 4\n  lr: 0.1\n")
    assert_one_line(cli("train", config, "--out", tmp_path / "out"), str(config), "duplicate key", "lr")


def test_unclear_duplicate_keys_in_a_study_are_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: a\nseeds: [0]\nname: b\n")
    assert_one_line(cli("run", path, "--dry-run"), str(path), "duplicate key", "name")


@pytest.mark.parametrize("key, value", [("data.download", "1"), ("train.progress", "'yes'"), ("model.learn_top", "0")])
def test_unclear_booleans_are_strict(tmp_path, key, value):
    config = run_config_file(tmp_path, tiny())
    assert_one_line(cli("train", config, "--out", tmp_path / "out", "--set", f"{key}={value}"), key)


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("model.depth=true", "model.depth: must be a number, not true or false"),
        ("train.lr=false", "train.lr: must be a number, not true or false"),
        ("seed=true", "seed: must be a number, not true or false"),
        ("train.steps=1000000000", "train.steps: Input should be less than or equal to 100000000"),
        ("train.steps=null", "no budget: give train.steps or train.epochs (both are null)"),
        ("train.eval_every=null", "no evaluation cadence: give train.eval_every or train.eval_every_epochs"),
    ],
)
def test_unclear_a_flag_for_a_number_a_huge_budget_or_none_is_refused(tmp_path, setting, expected):
    config = run_config_file(tmp_path, tiny())
    assert_one_line(cli("train", config, "--out", tmp_path / "out", "--set", setting), str(config), expected)
    assert not (tmp_path / "out").exists()


def test_wrong_a_batch_larger_than_the_training_set_is_refused_not_clamped(tmp_path):
    config = run_config_file(tmp_path, tiny(batch_size=33))  # 32 synthetic images
    result = cli("train", config, "--out", tmp_path / "out")
    assert_one_line(result, "train.batch_size=33", "32 training images")
    assert not (tmp_path / "out").exists()


def test_unclear_a_torn_last_line_of_a_finished_run_is_said_on_the_console(study, tmp_path):
    _, _, run = study
    config = run_config_file(tmp_path, yaml.safe_load(run.config.read_text()))
    rows = run.metrics.read()
    with open(run.metrics.path, "a") as handle:
        handle.write('{"step": 5, "train_')
    result = cli("train", config, "--out", run.path)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "dropped the torn last line of metrics.jsonl" in warnings[0], result.output
    assert run.metrics.read() == rows
    assert [e["kind"] for e in run.events.read()].count("repair") == 1


def test_unclear_an_unwritable_tensorboard_directory_is_one_warning(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tensorboard").symlink_to("/proc/1")  # no file can be made there, not even by root
    result = cli("train", run_config_file(tmp_path, tiny()), "--out", out, "--tensorboard")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "TensorBoard: could not open its event file" in warnings[0], result.output
    assert RunDir(out).state() == "done"


def test_unclear_a_damaged_checkpoint_in_a_study_fails_its_run_with_a_remedy_that_works(study):
    """Not ``interrupted`` with "run the same command again" (which fails the same way), and
    not a remedy that only fits ``glow-repro train --out``."""
    study_file, results, run = study
    run.write_status("interrupted", step=2)  # as a Ctrl-C leaves it
    run.checkpoint.write_bytes(b"not a checkpoint")
    logs = {log: log.read_bytes() for log in (run.metrics.path, run.evals.path)}
    result = cli("run", study_file, "--results", results, "--workers", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Run the same command again" not in result.output
    assert f"failed: {run.path.name}: " in result.output and "checkpoint.pt" in result.output
    assert "move the run directory away" in result.output and "--out" not in result.output
    assert run.state() == "failed"
    assert {log: log.read_bytes() for log in logs} == logs
    shutil.move(run.path, results / "moved-away")  # the remedy: the run trains again from the start
    again = cli("run", study_file, "--results", results, "--workers", "1")
    assert again.exit_code == 0 and RunDir(run.path).state() == "done", again.output


@pytest.fixture(scope="module")
def claimed(tmp_path_factory) -> Path:
    """A finished study of two permutations x two seeds with a claim on them."""
    home = tmp_path_factory.mktemp("claimed")
    claim = {"id": "shuffle-first", "source": "test", "key": "model.permutation", "order": ["shuffle", "reverse"]}
    spec = {"name": "claimed", "base": tiny(), "grid": {"model.permutation": ["reverse", "shuffle"]},
            "seeds": [0, 1], "claims": [claim]}  # fmt: skip
    report = run_study(write_yaml(home / "claimed.yaml", spec), home / "results", StudyOptions(launcher="inprocess"))
    assert report.counts["done"] == 4, report.outcomes
    return home / "results"


@pytest.fixture
def claimed_copy(claimed, tmp_path) -> Path:
    return Path(shutil.copytree(claimed, tmp_path / "results"))


def _warnings(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("warning: ")]


def test_unclear_runs_left_out_are_named_with_why_by_status_verdict_compare_and_report(claimed_copy, tmp_path):
    """A result that is not a number and a run whose config.yaml is gone were dropped silently:
    5 seeds judged, "trained 11 runs", while status counted them all done."""
    results = claimed_copy
    abc, gone = sorted((results / "runs").iterdir())[:2]
    summary = json.loads((abc / "summary.json").read_text())
    (abc / "summary.json").write_text(json.dumps({**summary, "final_test_bpd": "abc"}))
    (gone / "config.yaml").unlink()
    (results / "runs" / "never-s9").mkdir()
    RunDir(results / "runs" / "never-s9").write_status("failed", error="no data")  # failed before its config
    before = snapshot(results / "runs")
    for args in (["status"], ["verdict"], ["compare"], ["report", "--out", tmp_path / "report"]):
        result = cli(*args[:1], results, *args[1:])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert len(_warnings(result)) == 2, result.output
        named = dict(line.removeprefix("warning: run ").split(" is left out: ") for line in _warnings(result))
        assert "final_test_bpd: 'abc', not a number" in named[abc.name], named
        assert "config.yaml is gone" in named[gone.name], named
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"`{abc.name}`: summary.json holds final_test_bpd" in report and f"`{gone.name}`: its config" in report
    assert snapshot(results / "runs") == before


def test_unclear_a_killed_run_reads_as_killed_not_running_in_the_report(claimed_copy, tmp_path):
    results = claimed_copy
    killed = RunDir(sorted((results / "runs").iterdir())[0])
    killed.write_status("running", step=2)  # its trainer was SIGKILLed: nobody holds its lock
    result = cli("report", results, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"1 run killed (`{killed.path.name}`)" in report and "still running" not in report


def test_unclear_a_half_finished_study_names_what_it_sweeps(claimed_copy, tmp_path):
    """Only one permutation has runs yet: its variant is still named by the swept key."""
    results = claimed_copy
    for run in (results / "runs").glob("shuffle-*"):
        shutil.rmtree(run)
    result = cli("report", results, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert "1 of 2 variants (swept: `model.permutation`)" in report and "swept: nothing" not in report


def test_unclear_a_deleted_results_study_yaml_is_not_read_as_declaring_no_claims(claimed_copy, tmp_path):
    results = claimed_copy
    (results / "study.yaml").unlink()
    line = assert_one_line(cli("verdict", results), f"{results}/study.yaml is gone", "claims")
    assert "declares no claims" not in line
    report = cli("report", results, "--out", tmp_path / "report")
    assert report.exit_code == 0 and any("study.yaml is gone" in w for w in _warnings(report)), report.output


def test_wrong_a_claim_edited_outside_the_grid_in_the_results_study_yaml_is_refused(claimed_copy, tmp_path):
    results = claimed_copy
    study = yaml.safe_load((results / "study.yaml").read_text())
    study["claims"][0]["order"] = ["conv1x1", "reverse"]
    write_yaml(results / "study.yaml", study)
    expected = (f"{results}/study.yaml", "claims.0.order: conv1x1 is not a value of model.permutation",
                "allowed: reverse, shuffle")  # fmt: skip
    assert_one_line(cli("verdict", results), *expected)
    assert_one_line(cli("report", results, "--out", tmp_path / "report"), *expected)
    assert not (tmp_path / "report").exists()


def test_unclear_runs_of_two_specs_after_force_spec_are_said_to_be_mixed(study, tmp_path):
    _, results, _ = study
    other = write_yaml(tmp_path / "other.yaml", {"name": "tiny", "base": tiny(lr=2e-3), "seeds": [0]})
    assert cli("run", other, "--results", results, "--force-spec", "--workers", "1").exit_code == 0
    for args in (["status", results], ["verdict", results], ["report", results, "--out", tmp_path / "report"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert any("come from 2 different specs of the study (--force-spec)" in w for w in _warnings(result))
    assert "**The runs come from 2 different specs of this study**" in (tmp_path / "report" / "report.md").read_text()


# -- random corruption of every file of a finished run -------------------------------------------

CORRUPTED = [
    "status.json",
    "summary.json",
    "metrics.jsonl",
    "evals.jsonl",
    "environment.json",
    "config.yaml",
    "checkpoint.pt",
    "samples/samples.json",
    "../../manifest.json",
    "../../study.yaml",
]


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    """One of: flipped bytes, a cut, inserted non-UTF-8 bytes, or the file replaced by noise."""
    how = rng.choice(["flip", "cut", "insert", "noise"])
    if how == "cut" or not data:
        return data[: rng.randrange(len(data) + 1)]
    if how == "noise":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    at = rng.randrange(len(data))
    if how == "insert":
        return data[:at] + bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 8))) + data[at:]
    flipped = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


@pytest.mark.parametrize("case", range(30))
def test_corruption_of_any_file_gives_no_traceback(study, tmp_path, case):
    _, results, run = study
    rng = random.Random(case)
    path = run.path / CORRUPTED[case % len(CORRUPTED)]
    path.write_bytes(_corrupt(path.read_bytes(), rng))
    for args in (
        ["status", results],
        ["report", results, "--out", tmp_path / "report"],
        ["run", results / "study.yaml", "--results", results, "--dry-run"],
        ["sample", run.path, "--out", tmp_path / "samples", "-n", "2", "--interpolations", "1"],
    ):
        assert_no_traceback(cli(*args))


# -- signals (slow: real processes) --------------------------------------------------------------


def stubborn_train(config, run_dir, **kwargs):
    """A stand-in for ``train`` whose checkpoint after Ctrl-C takes 60 s (a huge model's)."""
    import signal
    import time

    from tests.test_runner import fake_train

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(time.monotonic()))
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, dump_run_config(config))
    run.write_status("running", step=0)
    for step in range(1, 10_000):
        if stop and time.monotonic() - stop[0] > 60:
            break
        run.metrics.append({"step": step, "train_bpd": 8.0})
        run.write_status("running", step=step)
        time.sleep(0.02)
    return fake_train(config, run_dir, **kwargs)


def _runner(study: Path, results: Path, train_fn: str, workers: int) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests import test_hardening, test_runner
        from glow_repro.study.runner import StudyOptions, run_study
        train_fn = getattr(test_hardening, {train_fn!r}, None) or getattr(test_runner, {train_fn!r}, None)
        report = run_study({str(study)!r}, {str(results)!r}, StudyOptions(workers={workers}, train_fn=train_fn))
        print("interrupted" if report.interrupted else "finished", report.counts, flush=True)
        sys.exit(130 if report.interrupted else 0)
    """)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait(predicate, timeout: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.mark.slow
def test_wrong_ctrl_c_the_moment_a_worker_locks_its_run(tmp_path):
    """The real ``glow-repro run``: Ctrl-C the moment a worker has locked its run. Workers
    come from a fork server with torch imported, so train() may or may not have begun: the
    run is left untouched or interrupted, never damaged, and the next run trains it. (The
    window before train() is tested alone in
    ``test_a_signal_between_lock_and_train_leaves_the_run_untouched``.)"""
    study = write_yaml(tmp_path / "tiny.yaml", {"name": "tiny", "base": tiny(), "seeds": [0]})
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "glow_repro", "run", str(study), "--results", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    _wait(lambda: any((results / "runs").glob("*/.lock")))
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "checkpoints kept" in err
    run = RunDir(next((results / "runs").iterdir()))
    assert run.state() in ("pending", "interrupted")
    if run.state() == "pending":  # stopped before train() wrote anything
        assert not run.metrics.path.exists()
    again = cli("run", study, "--results", results)
    assert again.exit_code == 0 and run.state() == "done", again.output


@pytest.mark.slow
def test_wrong_a_second_ctrl_c_stops_at_once_and_leaves_runs_resumable(tmp_path):
    import time

    from tests.test_runner import make_study

    study = make_study(tmp_path, widths=(12, 16), seeds=(0,), steps=200)
    results = tmp_path / "results"
    proc = _runner(study, results, "stubborn_train", workers=2)

    def steps() -> list[int]:
        return [RunDir(p).status().get("step", 0) for p in (results / "runs").glob("*")]

    _wait(lambda: len(steps()) == 2 and min(steps()) > 3)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 20
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Aborted" not in err and out.startswith("interrupted")
    assert sorted(RunDir(p).state() for p in (results / "runs").glob("*")) == ["interrupted", "interrupted"]
    again = _runner(study, results, "fake_train", workers=2)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, (out, err)
    for run in (results / "runs").iterdir():
        assert [row["step"] for row in RunDir(run).metrics.read()] == list(range(1, 201))


def _signal_trial(home: Path, first: signal.Signals, delay: float | None) -> str:
    """One ``glow-repro run --workers 1`` of two runs: ``first`` to the process group once the
    first run has logged 25 rows, SIGINT again ``delay`` s later; '' when it ended cleanly."""
    import time

    home.mkdir()
    base = tiny(steps=5000, eval_every=5000, checkpoint_every=10)
    study = write_yaml(home / "tiny.yaml", {"name": "tiny", "base": base, "seeds": [0, 1]})
    results = home / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "glow_repro", "run", str(study), "--results", str(results), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        _wait(lambda: any(p.read_bytes().count(b"\n") >= 25 for p in results.glob("runs/*/metrics.jsonl")), 60)
        os.killpg(proc.pid, first)
        if delay is not None:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=40)
    except (AssertionError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return f"hung: {err[-300:]!r}"
    runs = [RunDir(p) for p in (results / "runs").iterdir()]
    states = sorted(run.state() for run in runs)
    trained = [run for run in runs if run.metrics.path.exists()]
    steps = [row["step"] for row in trained[0].metrics.read()] if len(trained) == 1 else []
    if proc.returncode != 130 or "Traceback" in err + out or "interrupted: " not in err:
        return f"exit {proc.returncode}: {err[-600:]!r}"
    if states != ["interrupted"] or steps != list(range(1, len(steps) + 1)) or len(steps) < 25:
        return f"runs {states}, steps {steps[:3]}...{steps[-3:]}"
    return ""


@pytest.mark.slow
def test_wrong_two_ctrl_c_or_a_sigterm_at_random_moments_always_end_cleanly(tmp_path):
    """The real ``glow-repro run``: a second Ctrl-C 0.05-1 s after the first, at random, hung
    it or gave tracebacks in most trials; SIGTERM gave a worker's traceback. Each trial must
    exit 130 within its timeout, with no traceback, the first run ``interrupted`` with its
    history whole and the queued run untouched. Trials run three at a time."""
    from concurrent.futures import ThreadPoolExecutor

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    trials = [(signal.SIGINT, rng.uniform(0.05, 1.0)) for _ in range(12)] + [(signal.SIGTERM, None)] * 3
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: _signal_trial(tmp_path / str(i), *trials[i]), range(len(trials))))
    failed = [(first.name, delay, result) for (first, delay), result in zip(trials, results) if result]
    assert not failed, f"random seed {seed}: {failed}"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: t\nseeds: [2147483648]\n", "seeds must be non-negative and at most"),
        ("name: t\nseeds: [0]\nlauncher:\n  mem_gb: .inf\n", "launcher.mem_gb"),
    ],
)
def test_traceback_study_values_out_of_range_are_refused(tmp_path, text, expected):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert_one_line(cli("run", path, "--dry-run"), str(path), expected)


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`glow-repro run STUDY --dry-run | head -1`: the pipe closes before the table is written;
    the command stops with the shell's status for it (141), no `error:` line, no traceback."""
    study = Path(__file__).resolve().parents[1] / "studies" / "scale_ablation.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "glow_repro", "run", str(study), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the command writes anything
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == "", stderr


@pytest.mark.slow
def test_wrong_a_killed_launcher_leaves_no_worker_training(tmp_path):
    """SIGKILL to the launching process alone (an out-of-memory kill, ``kill -9``): its workers,
    whose parent may be the fork server, stop too; their runs are left ``interrupted``."""
    from tests.test_runner import SLOW_WIDTH, make_study

    study = make_study(tmp_path, widths=(SLOW_WIDTH,), seeds=(0, 1), steps=3000)
    results = tmp_path / "results"
    proc = _runner(study, results, "fake_train", workers=2)

    def states() -> list[str]:
        return [RunDir(p).state() for p in (results / "runs").glob("*")]

    _wait(lambda: states().count("running") == 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    _wait(lambda: states().count("interrupted") == 2, timeout=30)
    assert all(RunDir(p).status()["step"] < 3000 for p in (results / "runs").glob("*"))
