"""When a run evaluates (every N steps or every N epochs) and checkpoints (every N steps and,
optionally, every N wall minutes, with exact resume from a timed checkpoint)."""

from __future__ import annotations

import types

import pytest

from glow_repro.core.config import ConfigError, RunConfig, TrainConfig, run_identity, validate_model
from glow_repro.run import cadence
from glow_repro.run.engine import Engine
from glow_repro.run.rundir import RunDir
from glow_repro.run.train import train
from glow_repro.run.training_run import TrainingRun
from tests.conftest import tiny_config, tiny_raw

SMALL = {
    "data": {"synthetic_size": 64, "image_size": 8},  # 8 batches of 8 per epoch
    "model": {"depth": 1, "levels": 2, "width": 8},
    "train": {"steps": 8, "batch_size": 8, "eval_every": 100, "checkpoint_every": 100, "n_samples": 2},
}
TIMING = ("step_time", "images_per_s", "wall_time")


def config(**train_options) -> RunConfig:
    return tiny_config(SMALL, {"train": train_options})


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def due_steps(steps: int, per_epoch: int, **train_options) -> list[int]:
    cfg = TrainConfig.model_validate(train_options)
    return [step for step in range(1, steps + 1) if cadence.eval_due(step, cfg, per_epoch)]


@pytest.mark.parametrize(
    "options, per_epoch, expected",
    [
        ({"eval_every": 3}, 8, [3, 6, 9, 12]),
        ({"eval_every_epochs": 1}, 4, [4, 8, 12]),
        ({"eval_every_epochs": 0.5}, 8, [4, 8, 12]),
        ({"eval_every_epochs": 0.3}, 10, [3, 6, 9, 12]),  # 0.3 * 10 is 3.0000000000000004 in floats
        ({"eval_every_epochs": 1.5}, 3, [5, 9]),  # the first step at or after 4.5 and 9 steps
        ({"eval_every_epochs": 0.1}, 4, list(range(1, 13))),  # more often than steps: every step
    ],
)
def test_evaluation_steps_of_each_cadence(options, per_epoch, expected):
    assert due_steps(12, per_epoch, **options) == expected


def test_a_run_evaluates_every_half_epoch(tmp_path):
    summary = train(config(steps=10, eval_every=None, eval_every_epochs=0.5), tmp_path / "run", threads=1)
    assert [row["step"] for row in RunDir(tmp_path / "run").evals.read()] == [0, 4, 8, 10]
    assert summary["state"] == "done"


@pytest.mark.parametrize(
    "train_options, message",
    [
        (
            {"eval_every": 50, "eval_every_epochs": 1},
            "train: give the evaluation cadence as train.eval_every or as train.eval_every_epochs, not both",
        ),
        (
            {"checkpoint_every_minutes": 30, "on_nonfinite": "rollback"},
            "train: train.checkpoint_every_minutes cannot go with train.on_nonfinite=rollback: the step a "
            "rollback returns to would depend on wall time",
        ),
        ({"checkpoint_every_minutes": 0}, "train.checkpoint_every_minutes: Input should be greater than 0"),
    ],
)
def test_conflicting_cadences_are_one_clear_line(train_options, message):
    with pytest.raises(ConfigError) as err:
        validate_model(RunConfig, tiny_raw(SMALL, {"train": train_options}), "run.yaml")
    assert str(err.value).startswith(f"run.yaml: {message}") and "\n" not in str(err.value)


def test_an_epoch_cadence_alone_replaces_the_step_cadence_and_keeps_other_ids():
    by_epochs = RunConfig.model_validate({"train": {"eval_every_epochs": 0.5}})
    assert by_epochs.train.eval_every is None
    assert run_identity(by_epochs) != run_identity(RunConfig())
    assert "eval_every_epochs" not in run_identity(RunConfig())["train"]  # existing ids unchanged
    assert run_identity(config(checkpoint_every_minutes=5)) == run_identity(config())


def fake_clock(monkeypatch, seconds_per_step: float) -> None:
    """Wall time that moves only when the engine steps, by ``seconds_per_step`` each step."""
    now = {"t": 0.0}
    monkeypatch.setattr(cadence, "time", types.SimpleNamespace(monotonic=lambda: now["t"]))
    step = Engine.step

    def ticking_step(engine, *args, **kwargs):
        now["t"] += seconds_per_step
        return step(engine, *args, **kwargs)

    monkeypatch.setattr(Engine, "step", ticking_step)


def test_a_checkpoint_is_written_when_the_minutes_pass(tmp_path, monkeypatch):
    saved = []
    save = TrainingRun.save_checkpoint
    monkeypatch.setattr(TrainingRun, "save_checkpoint", lambda training: saved.append(training.step) or save(training))
    fake_clock(monkeypatch, seconds_per_step=25)  # one minute passes during the third step after a checkpoint
    train(config(checkpoint_every_minutes=1), tmp_path / "timed", threads=1)
    assert saved == [0, 3, 6, 8, 8]  # start, every 75 s (3 steps), the last step, the finished run
    saved.clear()
    train(config(), tmp_path / "steps", threads=1)
    assert saved == [0, 8, 8]  # without the option, the step cadence alone


def test_a_run_resumed_from_a_timed_checkpoint_is_exact(tmp_path, monkeypatch):
    cfg = config(checkpoint_every_minutes=1)
    fake_clock(monkeypatch, seconds_per_step=25)
    step, calls = Engine.step, []

    def crash_at_step_five(engine, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")
        return step(engine, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "step", crash_at_step_five)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg, tmp_path / "resumed", threads=1)
    resumed = RunDir(tmp_path / "resumed")
    assert resumed.status()["state"] == "failed" and resumed.status()["step"] == 3  # the timed checkpoint
    train(cfg, tmp_path / "resumed", threads=1)
    train(cfg, tmp_path / "whole", threads=1)
    whole = RunDir(tmp_path / "whole")
    assert [row["step"] for row in resumed.metrics.read()] == list(range(1, 9))
    assert without_timing(resumed.metrics.read()) == without_timing(whole.metrics.read())
    assert without_timing(resumed.evals.read()) == without_timing(whole.evals.read())
