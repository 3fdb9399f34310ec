"""Stability forensics: faults are found in the right layer and step, the recovery
policies do what they say without losing or duplicating metric rows, capsules replay, and a
healthy run raises no alarm."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from click.testing import CliRunner

import glow_repro.run.engine as engine_module
from glow_repro.cli import main
from glow_repro.core.config import MonitorConfig, RunConfig
from glow_repro.core.flows import InvConv1x1
from glow_repro.core.model import Glow
from glow_repro.run.forensics import Finding, locate_nonfinite, replay_capsule
from glow_repro.run.rundir import RunDir
from glow_repro.run.stability import StabilityMonitor, health_signals
from glow_repro.run.train import train
from tests.conftest import tiny_config

LAYER = "levels.0.steps.1.layers.2"  # the coupling of the second step of the first level
RUNS = {
    "data": {"synthetic_size": 128},
    "train": {"steps": 20, "batch_size": 16, "eval_every": 10, "checkpoint_every": 5, "n_samples": 2},
}


def config(**sections) -> RunConfig:
    return tiny_config(RUNS, sections)


def inject(
    monkeypatch, layer: str, calls: set[int] | None = None, *, gradient: bool = False, from_call: int | None = None
) -> None:
    """Make ``train`` build a Glow whose ``layer`` emits NaN on chosen training-mode forwards.

    Training-mode forward number 1 is the ActNorm init, number s + 1 is step s; the forensic
    re-run of a bad step is the forward right after it.
    """

    def build(model_config, shape):
        model = Glow(model_config, shape)
        counter = {"n": 0}

        def fires() -> bool:
            return (calls is not None and counter["n"] in calls) or (
                from_call is not None and counter["n"] >= from_call
            )

        def count(module, inputs):
            if module.training:
                counter["n"] += 1

        def poison_output(module, inputs, output):
            if module.training and fires():
                return (output[0] * float("nan"), output[1])

        def poison_gradient(module, grad_input, grad_output):
            if fires():
                return tuple(g * float("nan") if g is not None else None for g in grad_input)

        model.register_forward_pre_hook(count)
        target = model.get_submodule(layer)
        if gradient:
            target.register_full_backward_hook(poison_gradient)
        else:
            target.register_forward_hook(poison_output)
        return model

    monkeypatch.setattr(engine_module, "Glow", build)


def steps_logged(run: RunDir) -> list[int]:
    return [row["step"] for row in run.metrics.read()]


def test_forward_fault_is_reported_with_its_layer_and_step(monkeypatch, tmp_path):
    inject(monkeypatch, LAYER, from_call=8)  # step 7 onwards
    summary = train(config(), tmp_path / "run", threads=1)
    assert summary["state"] == "diverged" and summary["first_nonfinite_step"] == 7
    (event,) = RunDir(tmp_path / "run").events.read()
    assert (event["kind"], event["step"], event["layer"], event["phase"]) == ("nonfinite_loss", 7, LAYER, "forward")
    assert RunDir(tmp_path / "run").status()["state"] == "diverged"
    assert steps_logged(RunDir(tmp_path / "run")) == list(range(1, 8))


def test_gradient_fault_is_reported_with_its_layer_and_step(monkeypatch, tmp_path):
    layer = "levels.1.steps.0.layers.1"  # a permutation (1x1 conv) in the second level
    inject(monkeypatch, layer, from_call=5, gradient=True)  # step 4 onwards
    summary = train(config(), tmp_path / "run", threads=1)
    assert summary["first_nonfinite_step"] == 4
    (event,) = RunDir(tmp_path / "run").events.read()
    assert (event["kind"], event["layer"], event["phase"]) == ("nonfinite_gradient", layer, "backward")


def test_forensics_rerun_the_batch_in_the_runs_precision():
    """A fault that only bf16 autocast triggers (here: a conv that overflows when its output is
    bf16) is found by the re-run of a bf16 run, and absent from a float32 re-run."""
    torch.manual_seed(0)
    model = Glow(config().model, (1, 16, 16))
    x = torch.rand(4, 1, 16, 16) - 0.5
    model(x)  # ActNorm init
    conv = model.get_submodule(f"{LAYER}.nn.layers.4")  # the zero conv: autocast runs it in bf16

    def overflow_in_bf16(module, inputs, output):
        return output * float("inf") if output.dtype == torch.bfloat16 else output

    conv.register_forward_hook(overflow_in_bf16)
    assert locate_nonfinite(model, x, 8, "float32") == Finding("none", None)
    assert locate_nonfinite(model, x, 8, "bf16") == Finding("forward", f"{LAYER}.nn.layers.4")
    # the re-run computes its ReLUs out of place (hooks forbid in place) and puts them back
    assert all(relu.inplace for relu in model.modules() if isinstance(relu, torch.nn.ReLU))


def test_skip_drops_the_bad_step_and_goes_on(monkeypatch, tmp_path):
    inject(monkeypatch, LAYER, calls={8, 9})  # step 7 and its forensic re-run
    summary = train(config(train={"on_nonfinite": "skip"}), tmp_path / "run", threads=1)
    run = RunDir(tmp_path / "run")
    assert summary["state"] == "done" and summary["steps_skipped"] == 1
    assert steps_logged(run) == list(range(1, 21))
    bad = next(row for row in run.metrics.read() if row["step"] == 7)
    assert bad["train_bpd"] != bad["train_bpd"]  # NaN is kept in the log as what happened
    assert [e["kind"] for e in run.events.read()] == ["nonfinite_loss"]


def test_skip_gives_up_after_max_skips(monkeypatch, tmp_path):
    inject(monkeypatch, LAYER, from_call=8)
    summary = train(config(train={"on_nonfinite": "skip", "max_skips": 2}), tmp_path / "run", threads=1)
    run = RunDir(tmp_path / "run")
    assert summary["state"] == "diverged" and summary["steps_skipped"] == 3
    assert [e["kind"] for e in run.events.read()] == ["nonfinite_loss"] * 3 + ["gave_up"]


def test_rollback_reloads_the_last_checkpoint_with_a_lower_lr(monkeypatch, tmp_path):
    inject(monkeypatch, LAYER, calls={8, 9})  # step 7; the checkpoint before it is step 5
    cfg = config(train={"on_nonfinite": "rollback", "rollback_lr_factor": 0.5, "lr": 1e-3})
    summary = train(cfg, tmp_path / "run", threads=1)
    run = RunDir(tmp_path / "run")
    assert summary["state"] == "done" and summary["rollbacks"] == 1
    assert steps_logged(run) == list(range(1, 21)), "a metrics row was lost or duplicated"
    lrs = {row["step"]: row["lr"] for row in run.metrics.read()}
    assert lrs[5] == pytest.approx(1e-3) and lrs[6] == pytest.approx(5e-4) and lrs[20] == pytest.approx(5e-4)
    kinds = [(e["kind"], e["step"]) for e in run.events.read()]
    assert kinds == [("nonfinite_loss", 7), ("rollback", 7)]
    assert [e["step"] for e in run.evals.read()] == [0, 10, 20]


def test_rollback_gives_up_after_max_rollbacks(monkeypatch, tmp_path):
    inject(monkeypatch, LAYER, from_call=8)
    cfg = config(train={"on_nonfinite": "rollback", "max_rollbacks": 2})
    summary = train(cfg, tmp_path / "run", threads=1)
    assert summary["state"] == "diverged" and summary["rollbacks"] == 3
    assert summary["events_by_kind"] == {"nonfinite_loss": 3, "rollback": 2, "gave_up": 1}


def test_a_real_divergence_writes_a_capsule_that_replays_to_the_same_layer(tmp_path):
    """exp scale at lr 0.1 overflows within a few steps on this tiny model (measured)."""
    cfg = config(model={"scale": "exp"}, train={"lr": 0.1})
    summary = train(cfg, tmp_path / "run", threads=1)
    assert summary["state"] == "diverged"
    run = RunDir(tmp_path / "run")
    (event,) = run.events.read()
    (capsule,) = (run.path / "capsules").iterdir()
    step, recorded, replayed = replay_capsule(capsule)
    assert step == summary["first_nonfinite_step"] == event["step"]
    assert replayed == recorded and replayed.layer == event["layer"] and replayed.phase != "none"
    result = CliRunner().invoke(main, ["replay", str(capsule)])
    assert result.exit_code == 0 and f"step {step}: replayed first non-finite" in result.output
    assert event["layer"] in result.output


def test_replay_of_a_missing_capsule_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2 and "no such capsule" in result.output


def test_exploding_but_finite_bpd_counts_as_diverged(tmp_path):
    cfg = config(monitor={"max_bpd": 8.0}, data={"synthetic_size": 64})  # start is about 8.3 bpd
    summary = train(cfg, tmp_path / "run", threads=1)
    assert summary["state"] == "diverged" and summary["first_nonfinite_step"] == 1
    assert RunDir(tmp_path / "run").events.read()[0]["kind"] == "bpd_explosion"


@pytest.mark.slow  # a run of 120 steps
def test_healthy_run_raises_no_events_with_default_thresholds(tmp_path):
    summary = train(config(train={"steps": 120, "eval_every": 60, "checkpoint_every": 60}), tmp_path / "run", threads=1)
    assert summary["state"] == "done"
    assert RunDir(tmp_path / "run").events.read() == []


def monitor_with_history(losses, grads) -> StabilityMonitor:
    monitor = StabilityMonitor(MonitorConfig(health_every=0), torch.nn.Linear(1, 1), "run")
    monitor.losses, monitor.grad_norms = deque(losses, maxlen=100), deque(grads, maxlen=100)
    return monitor


def test_spike_detection_against_running_median_and_mad():
    losses = [5.0 + 0.01 * ((-1) ** i) for i in range(30)]  # median 5.0, MAD 0.01
    grads = [1.0 + 0.1 * (i % 3) for i in range(30)]
    calm = monitor_with_history(losses, grads)
    assert calm.observe(31, 5.05, 1.3, 1e-3) == []  # within 10 MADs / 3x median
    spiky = monitor_with_history(losses, grads)
    kinds = [e["kind"] for e in spiky.observe(31, 6.0, 200.0, 1e-3)]
    assert kinds == ["loss_spike", "grad_norm_spike"]
    # a loss that falls steadily (early training) is never a spike
    falling = monitor_with_history([9.0 - 0.1 * i for i in range(30)], grads)
    assert falling.observe(31, 6.0, 1.0, 1e-3) == []


def test_health_signals_name_the_worst_layer():
    model = torch.nn.Sequential(InvConv1x1(4), InvConv1x1(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-6])))
    signals = health_signals(model)
    assert signals["conv1x1_condition"][1] == "1"
    assert signals["conv1x1_condition"][0] == pytest.approx(1e6, rel=1e-6)
    monitor = StabilityMonitor(MonitorConfig(health_every=1), model, "run")
    kinds = {e["kind"]: e for e in monitor.observe(1, 1.0, 1.0, 1e-3)}
    assert kinds["conv1x1_condition"]["layer"] == "1"
    value, layer = signals["conv1x1_logabsdet_min"]
    assert layer == "1" and value == pytest.approx(math.log(1e-6), abs=1e-6)
    assert "conv1x1_logabsdet_min" not in kinds  # -13.8 is above the default limit of -20


@pytest.mark.slow
def test_smoke_study_raises_no_false_alarms(tmp_path):
    """Issue #5: a healthy study produces no events with the default thresholds."""
    from glow_repro.study.runner import StudyOptions, run_study
    from glow_repro.study.tables import load_tables

    report = run_study("studies/smoke.yaml", tmp_path / "smoke", StudyOptions(launcher="inprocess"))
    assert report.counts.get("done") == 4
    tables = load_tables(tmp_path / "smoke")
    assert tables.events.empty
    assert not tables.finals["diverged"].any()
