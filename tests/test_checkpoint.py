"""``checkpoint.pt`` (README, "Interrupting and resuming"): written and read back whole, files
written before the format had a version still read, a later version refused in one line."""

from __future__ import annotations

import pytest
import torch

from glow_repro.run.checkpoint import VERSION, Checkpoint, evaluation_weights
from glow_repro.run.rundir import UnreadableFileError


def checkpoint() -> Checkpoint:
    weights = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "ema": {"module.w": torch.zeros(2)}}
    counters = {"skipped": 0, "rollbacks": 1, "lr_scale": 0.5, "first_nonfinite": 3}
    return Checkpoint(4, 12.5, counters, weights, torch.get_rng_state(), {"losses": [3.0], "grad_norms": [1.0]})


def test_a_checkpoint_reads_back_as_written(tmp_path):
    written = checkpoint()
    written.write(tmp_path / "checkpoint.pt")
    read = Checkpoint.read(tmp_path / "checkpoint.pt")
    assert (read.step, read.elapsed, read.counters, read.monitor) == (4, 12.5, written.counters, written.monitor)
    assert torch.equal(read.torch_rng, written.torch_rng) and torch.equal(read.weights["model"]["w"], torch.ones(2))
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["version"] == VERSION
    ema = evaluation_weights(tmp_path / "checkpoint.pt", ema=True, device="cpu", remedy="")
    assert list(ema) == ["w"]  # the averaged model's own keys


def test_a_checkpoint_from_before_versions_still_reads(tmp_path):
    checkpoint().write(tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["version"], state["monitor"]  # the oldest files kept no monitor history
    torch.save(state, tmp_path / "checkpoint.pt")
    read = Checkpoint.read(tmp_path / "checkpoint.pt")
    assert read.step == 4 and read.monitor is None


def test_a_later_version_is_refused_before_its_keys_are_read(tmp_path):
    torch.save({"version": VERSION + 1}, tmp_path / "checkpoint.pt")
    for read in (
        lambda: Checkpoint.read(tmp_path / "checkpoint.pt"),
        lambda: evaluation_weights(tmp_path / "checkpoint.pt", ema=False, device="cpu", remedy=""),
    ):
        with pytest.raises(UnreadableFileError, match=f"format version {VERSION + 1}, which this glow-repro"):
            read()
