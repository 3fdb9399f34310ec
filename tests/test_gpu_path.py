"""The CUDA path, checked on the CPU: resume with the RNG state kept on the CPU, TF32 and
cuDNN flags set from the config both ways and restored, one GPU per process, and a training
step without host reads or graph breaks."""

from __future__ import annotations

import json

import pytest
import torch

from glow_repro.config import RunConfig
from glow_repro.data import load_split
from glow_repro.distributed import DistContext
from glow_repro.rundir import RunDir
from glow_repro.train import _Run, train

TINY = {
    "data": {"dataset": "synthetic", "synthetic_size": 64, "image_size": 8},
    "model": {"depth": 2, "levels": 2, "width": 8},
    "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "checkpoint_every": 2, "device": "cpu",
              "optimizer": "adamax", "progress": False, "n_samples": 2},
}


def config(**train_options) -> RunConfig:
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(train_options)
    return RunConfig.model_validate(raw)


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_a_checkpoint_resumes_on_another_device_with_the_rng_state_on_the_cpu(tmp_path):
    """The meta device stands in for a GPU: the checkpoint's weights go to the run's device,
    its CPU RNG state stays on the CPU (``torch.set_rng_state`` takes no other)."""
    cfg = config()
    train(cfg, tmp_path / "run", threads=1)
    work = _Run(cfg, RunDir(tmp_path / "run"), torch.device("meta"), load_split(cfg.data, "train"),
                load_split(cfg.data, "test"), DistContext())
    expected = torch.load(RunDir(tmp_path / "run").checkpoint, weights_only=False)["torch_rng"]
    torch.manual_seed(123)
    work.load_checkpoint()
    assert work.step == 4 and torch.equal(torch.get_rng_state(), expected)
    assert next(work.engine.model.parameters()).device.type == "meta"


FLAGS = {"matmul_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
         "cudnn_tf32": (torch.backends.cudnn, "allow_tf32"),
         "cudnn_deterministic": (torch.backends.cudnn, "deterministic")}


def read_flags() -> dict[str, bool]:
    return {key: getattr(owner, name) for key, (owner, name) in FLAGS.items()}


@pytest.fixture
def process_flags():
    """The process's flags, put back after the test (they are not plain attributes, which
    monkeypatch needs)."""
    saved = read_flags()
    yield
    for key, (owner, name) in FLAGS.items():
        setattr(owner, name, saved[key])


@pytest.mark.parametrize("value", [False, True])
def test_tf32_and_determinism_follow_the_config_both_ways_and_are_restored(tmp_path, monkeypatch,
                                                                         process_flags, value):
    """A run sets TF32 for matrix products and cuDNN, and cuDNN determinism, to its config's
    values while it trains (cuDNN's TF32 is on by default: float32 must switch it off) and
    leaves the process's settings as it found them."""
    from glow_repro.engine import Engine

    seen = []
    step = Engine.step
    monkeypatch.setattr(Engine, "step", lambda self, *a, **k: seen.append(read_flags()) or step(self, *a, **k))
    before = {key: not value for key in FLAGS}
    for key, (owner, name) in FLAGS.items():
        setattr(owner, name, before[key])
    train(config(steps=2, tf32=value, deterministic=value), tmp_path / "run", threads=1)
    assert seen and all(flags == dict.fromkeys(FLAGS, value) for flags in seen)
    assert read_flags() == before
