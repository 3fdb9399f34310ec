"""One training run: determinism, exact resume after SIGKILL, clear config errors,
and learning on synthetic data."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.core.config import RunConfig, dump_run_config, load_run_config
from glow_repro.core.objective import preprocess
from glow_repro.run.engine import Engine
from glow_repro.run.rundir import RunDir
from glow_repro.run.stability import RecoveryPolicy
from glow_repro.run.train import train
from glow_repro.run.training_run import learning_rate
from tests.conftest import tiny_config

RUNS = {
    "data": {"synthetic_size": 256},
    "train": {
        "steps": 40,
        "batch_size": 16,
        "eval_every": 20,
        "checkpoint_every": 10,
        "warmup_steps": 5,
        "n_samples": 4,
    },
}
TIMING = ("step_time", "images_per_s", "wall_time")


def config(seed: int = 0, **sections) -> RunConfig:
    return tiny_config(RUNS, sections, seed=seed)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def write_config(path: Path, cfg: RunConfig) -> Path:
    path.write_text(dump_run_config(cfg))
    return path


@pytest.mark.slow  # three runs of 40 steps
def test_same_seed_gives_identical_metrics_and_other_seeds_differ(tmp_path):
    a = train(config(), tmp_path / "a", threads=1)
    b = train(config(), tmp_path / "b", threads=1)
    c = train(config(seed=1), tmp_path / "c", threads=1)

    def metrics(name):
        return without_timing(RunDir(tmp_path / name).metrics.read())

    def evals(name):
        return without_timing(RunDir(tmp_path / name).evals.read())

    assert metrics("a") == metrics("b") and evals("a") == evals("b")
    assert a["final_test_bpd"] == b["final_test_bpd"]
    assert metrics("a") != metrics("c")
    assert c["final_test_bpd"] != a["final_test_bpd"]


def test_run_directory_holds_every_record(tmp_path):
    summary = train(config(), tmp_path / "run", threads=1)
    run = RunDir(tmp_path / "run")
    assert run.status()["state"] == "done" and summary["state"] == "done"
    assert [row["step"] for row in run.metrics.read()] == list(range(1, 41))
    assert [row["step"] for row in run.evals.read()] == [0, 20, 40]
    assert load_run_config(run.config) == config()
    env = json.loads(run.environment.read_text())
    assert {"torch", "device", "threads", "git_commit", "python"} <= set(env)
    for name in ("temperatures.png", "reconstructions.png", "samples.json"):
        assert (run.samples / name).stat().st_size > 0
    assert summary["reconstruction_error"] < 1e-4
    assert summary["n_params"] > 0 and summary["wall_time"] > 0


@pytest.mark.slow  # a run of 40 steps in two parts, and one in one go
def test_resume_after_clean_stop_continues_without_gaps(tmp_path):
    """Train 20 of 40 steps, then ask for 40: the log continues at 21 and equals one go."""
    train(config(train={"steps": 20}), tmp_path / "split", threads=1)
    # same run identity needs the same config: rewrite the budget in the saved file only
    run = RunDir(tmp_path / "split")
    run.config.write_text(dump_run_config(config()))
    train(config(), tmp_path / "split", threads=1)
    train(config(), tmp_path / "whole", threads=1)
    assert without_timing(run.metrics.read()) == without_timing(RunDir(tmp_path / "whole").metrics.read())


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = config(train={"steps": 300, "checkpoint_every": 25, "eval_every": 100})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "glow_repro", "train", str(path), "--out", str(out), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rows = RunDir(out).metrics.read()
        if rows and rows[-1]["step"] >= 110:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = RunDir(out).metrics.read()[-1]["step"]
    assert 110 <= killed_at < 300
    assert RunDir(out).status()["state"] == "running"
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    train(cfg, tmp_path / "whole", threads=1)
    resumed, whole = RunDir(out), RunDir(tmp_path / "whole")
    assert [r["step"] for r in resumed.metrics.read()] == list(range(1, 301))
    # bit-exact: same device and threads, and everything random is a function of (seed, step)
    assert without_timing(resumed.metrics.read()) == without_timing(whole.metrics.read())
    assert without_timing(resumed.evals.read()) == without_timing(whole.evals.read())
    assert resumed.summary()["final_test_bpd"] == whole.summary()["final_test_bpd"]


@pytest.mark.slow
def test_short_run_lowers_test_bpd_well_below_its_start(tmp_path):
    """The synthetic images have 4 gray levels, so 2-bit data is their natural scale."""
    cfg = config(data={"n_bits": 2}, train={"steps": 150, "lr": 3e-3, "eval_every": 150, "batch_size": 32})
    summary = train(cfg, tmp_path / "run", threads=2)
    assert summary["final_test_bpd"] < 0.75 * summary["initial_test_bpd"]


def test_warmup_is_linear_then_constant():
    assert [learning_rate(1e-3, 4, s) for s in (1, 2, 4, 5, 100)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(1e-3, 0, 1) == 1e-3


def test_budget_and_warmup_in_epochs(tmp_path):
    """256 synthetic images in batches of 16 make 16 steps an epoch."""
    raw = config().to_dict()
    raw["train"].update({"epochs": 1.5, "warmup_epochs": 0.25, "warmup_steps": 0, "lr": 1e-3})
    del raw["train"]["steps"]
    cfg = RunConfig.model_validate(raw)
    assert cfg.train.steps is None
    assert RunConfig.model_validate(yaml.safe_load(dump_run_config(cfg))) == cfg  # round trip
    summary = train(cfg, tmp_path / "run", threads=1)
    rows = RunDir(tmp_path / "run").metrics.read()
    assert summary["step"] == 24 and [r["step"] for r in rows] == list(range(1, 25))
    assert [r["lr"] for r in rows[:5]] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert rows[-1]["epoch"] == pytest.approx(1.5)


def test_steps_and_epochs_together_are_refused(tmp_path):
    raw = config().to_dict()
    raw["train"]["epochs"] = 2
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "train.steps or as train.epochs, not both" in result.output


def test_a_directory_holding_another_config_is_refused(tmp_path):
    train(config(train={"steps": 2}), tmp_path / "run", threads=1)
    with pytest.raises(Exception, match="different config"):
        train(config(model={"width": 8}, train={"steps": 2}), tmp_path / "run", threads=1)


MALFORMED = {
    "unknown key": ({"model": {"depht": 3}}, "model.depht: unknown key"),
    "bad choice": ({"model": {"permutation": "conv2x2"}}, "model.permutation: must be one of"),
    "negative lr": ({"train": {"lr": -0.1}}, "train.lr"),
    "indivisible image": ({"model": {"levels": 4}}, "not divisible by 2^levels = 16"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_is_one_clear_line_and_no_run_directory(tmp_path, case):
    patch, expected = MALFORMED[case]
    raw = config().to_dict()
    for section, values in patch.items():
        raw[section].update(values)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert expected in result.output and str(path) in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_file_and_yaml_syntax_error_are_clear(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  depth: [1,\n")
    result = runner.invoke(main, ["train", str(broken), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "YAML syntax error at line" in result.output
    assert not (tmp_path / "o").exists()


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", config(train={"steps": 3}))
    runner = CliRunner()
    bad = runner.invoke(main, ["train", str(path), "--out", str(tmp_path / "o"), "--set", "train.optimizer=sgd"])
    assert bad.exit_code == 2 and "train.optimizer: must be one of" in bad.output
    ok = runner.invoke(main, ["train", str(path), "--out", str(tmp_path / "o"), "--set", "train.steps=2", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert load_run_config(tmp_path / "o" / "config.yaml").train.steps == 2


def test_shift_augmentation_translates_each_image_with_nearest_fill():
    """Checked against a per-pixel loop: out[y, x] = image[clamp(y - dy), clamp(x - dx)]."""
    from glow_repro.core.batches import shift_augment

    images = torch.randint(0, 256, (6, 2, 10, 10), dtype=torch.uint8)
    shifted = shift_augment(images, torch.Generator().manual_seed(3))
    draw = torch.Generator().manual_seed(3)  # the same draws as inside shift_augment
    dy = torch.randint(-1, 2, (6, 1), generator=draw)[:, 0]
    dx = torch.randint(-1, 2, (6, 1), generator=draw)[:, 0]
    for b in range(6):
        for y in range(10):
            for x in range(10):
                source = images[b, :, min(max(y - dy[b], 0), 9), min(max(x - dx[b], 0), 9)]
                assert torch.equal(shifted[b, :, y, x], source)
    assert len({(int(a), int(c)) for a, c in zip(dy, dx)}) > 1, "every image got the same shift"


def test_a_run_with_shift_augmentation_trains(tmp_path):
    summary = train(config(train={"augment_shift": True, "steps": 5}), tmp_path / "run", threads=1)
    assert summary["state"] == "done" and summary["final_test_bpd"] < summary["initial_test_bpd"]


def test_engine_builds_the_same_weights_from_a_seed_and_keeps_no_bad_update():
    """Two engines of one seed start equal; a batch with a NaN reports ``nonfinite_loss`` and
    leaves every weight as it was, while a good batch moves them."""
    cfg = config()
    engines = [Engine(cfg, torch.device("cpu")) for _ in range(2)]
    first, second = (e.model.state_dict() for e in engines)
    assert all(torch.equal(first[name], second[name]) for name in first)
    engine = engines[0]
    x = preprocess(torch.randint(0, 256, (8, *cfg.data.shape), dtype=torch.uint8), cfg.data.n_bits)
    engine.initialise(x)
    before = {name: value.clone() for name, value in engine.model.state_dict().items()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    result = engine.step(bad, 1e-3)
    assert result.fault == "nonfinite_loss" and math.isnan(result.loss)
    assert all(torch.equal(before[name], value) for name, value in engine.model.state_dict().items())
    good = engine.step(x, 1e-3)
    assert good.fault is None and math.isfinite(good.loss) and good.grad_norm > 0
    assert any(not torch.equal(before[name], value) for name, value in engine.model.state_dict().items())


@pytest.mark.parametrize(
    "policy, kind, responses",
    [
        ("stop", "nonfinite_loss", [("stop", True, False)]),
        ("skip", "nonfinite_loss", [("skip", False, False), ("skip", False, False), ("skip", True, True)]),
        ("skip", "nonfinite_parameters", [("stop", True, False)]),  # an applied update cannot be skipped
        (
            "rollback",
            "nonfinite_parameters",
            [("rollback", False, False), ("rollback", False, False), ("rollback", True, True)],
        ),
    ],
)
def test_recovery_policy_counts_and_gives_up_after_its_budget(policy, kind, responses):
    cfg = config(train={"on_nonfinite": policy, "max_skips": 2, "max_rollbacks": 2, "rollback_lr_factor": 0.5})
    recovery = RecoveryPolicy(cfg.train)
    got = [recovery.respond(kind, step) for step in range(7, 7 + len(responses))]
    assert [(r.action, r.diverged, r.gave_up) for r in got] == responses
    assert recovery.first_nonfinite == 7
    assert recovery.lr_scale == (0.25 if policy == "rollback" else 1.0)  # the third rollback never ran
    restored = RecoveryPolicy(cfg.train)
    restored.load_counters(recovery.counters())
    assert restored.counters() == recovery.counters()
