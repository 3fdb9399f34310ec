"""``--workers auto``: one run per core (or per ``train.threads``), capped by the runs left and
by memory; one run per GPU on CUDA; chosen from the machine when a study launches."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.core.config import RunConfig
from glow_repro.study import workers
from glow_repro.study.runner import StudyOptions, run_study
from glow_repro.study.workers import auto_workers
from tests.test_runner import fake_train, make_study

GiB = 2**30


def configs(n: int, threads: int | None = None, device: str = "cpu") -> list[RunConfig]:
    return [RunConfig.model_validate({"train": {"threads": threads, "device": device}, "seed": s}) for s in range(n)]


@pytest.mark.parametrize(("cores", "runs", "threads", "memory", "gpus", "expected"), [
    (2, 12, None, 20 * GiB, 0, 2),    # this machine: two single-thread runs side by side
    (16, 12, None, 64 * GiB, 0, 12),  # capped by the runs left
    (16, 24, 4, 64 * GiB, 0, 4),      # train.threads: 4 -> 16 // 4
    (16, 24, None, 5 * GiB, 0, 2),    # capped by memory: 5 GiB // 2 GiB
    (16, 24, None, GiB, 0, 1),        # never fewer than one
    (2, 24, 3, None, 0, 1),           # more threads than cores still trains one run
    (64, 24, None, None, 4, 4),       # CUDA: one run per GPU
    (2, 0, None, None, 0, 1),         # nothing left to train
])  # fmt: skip
def test_auto_workers_on_a_faked_machine(cores, runs, threads, memory, gpus, expected) -> None:
    assert auto_workers(configs(runs, threads), cores=cores, memory=memory, gpus=gpus) == expected


def test_cpu_only_runs_never_ask_for_gpus() -> None:
    assert workers.cuda_devices(configs(3)) == 0


def test_run_defaults_to_auto_and_says_what_it_chose(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    monkeypatch.setattr(workers, "available_memory", lambda: 64 * GiB)
    study = make_study(tmp_path, widths=(12, 16), seeds=(0, 1))
    report = run_study(
        study, tmp_path / "results", StudyOptions(workers=None, launcher="inprocess", train_fn=fake_train)
    )
    assert len(report.plan) == 4 and report.workers == 3


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_workers_value_is_a_usage_error(tmp_path, bad) -> None:
    study = make_study(tmp_path)
    result = CliRunner().invoke(main, ["run", str(study), "--workers", bad, "--dry-run"])
    assert result.exit_code == 2
    assert "neither 'auto' nor a whole number" in result.output
