"""The engine's Polyak average (Glow, section 5) against torch's ``AveragedModel``: the same
weights without reading the device, integer buffers kept exact, and the count of updates
restored from a checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from glow_repro.core.config import ModelConfig
from glow_repro.core.model import Glow
from glow_repro.run.engine import ExponentialMovingAverage

SHAPE = (1, 8, 8)


def glow(permutation: str = "conv1x1") -> Glow:
    torch.manual_seed(0)
    return Glow(ModelConfig(depth=2, levels=2, width=8, permutation=permutation), SHAPE)


def train_a_little(model: Glow, averages: list[torch.nn.Module], updates: int) -> None:
    """Move the weights ``updates`` times, updating every average after each move."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(updates):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
        for average in averages:
            average.update_parameters(model)


def test_the_average_is_averaged_models_bit_for_bit():
    model = glow()
    ours = ExponentialMovingAverage(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    train_a_little(model, [ours, reference], 5)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in ours.state_dict().items())
    assert ours.updates == int(ours.n_averaged) == 5


def test_an_update_reads_nothing_from_the_device():
    from glow_repro.run.benchmark import count_host_reads

    model = glow()
    average = ExponentialMovingAverage(model, 0.9)
    train_a_little(model, [average], 1)
    with count_host_reads() as reads:
        train_a_little(model, [average], 2)
    assert reads.count == 0


@pytest.mark.parametrize("decay", [0.9, 0.9995, 0.9999])
def test_a_shuffles_permutation_stays_exact(decay):
    """``AveragedModel``'s EMA rounds the average of an integer buffer back to an integer
    (11 * 0.9999 + 11 * 0.0001 becomes 10 at float32): the average must copy them."""
    model = glow("shuffle")
    average = ExponentialMovingAverage(model, decay)
    train_a_little(model, [average], 3)
    model_buffers = dict(model.named_buffers())
    assert all(torch.equal(value, model_buffers[name]) for name, value in average.module.named_buffers())


@pytest.mark.parametrize("updates", [0, 3])
def test_a_loaded_average_continues_as_the_saved_one(updates):
    """The count of updates comes back with the state: a fresh average copies the weights on
    its first update, a loaded one that had updates averages them."""
    model = glow()
    saved = ExponentialMovingAverage(model, 0.9)
    train_a_little(model, [saved], updates)
    loaded = ExponentialMovingAverage(glow(), 0.9)
    loaded.updates = 7  # stale: the load must set it
    loaded.load_state_dict(saved.state_dict())
    assert loaded.updates == updates
    train_a_little(model, [saved, loaded], 1)
    assert all(torch.equal(value, saved.state_dict()[key]) for key, value in loaded.state_dict().items())
