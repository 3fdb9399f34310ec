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
