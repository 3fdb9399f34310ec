"""Test bits per dimension of a model (Glow, section 5) on fixed dequantisation noise."""

from __future__ import annotations

import math

import torch

from glow_repro.model import Glow
from glow_repro.objective import bits_per_dim, preprocess

#: Seed of the dequantisation noise used for every evaluation, so that evaluations at different
#: steps, and of different runs, see the same noisy test set (paired comparisons).
EVAL_NOISE_SEED = 20180709


@torch.inference_mode()
def bpd_sum(model: Glow, images: torch.Tensor, n_bits: int, batch_size: int, device: torch.device,
            *, rank: int = 0, world_size: int = 1) -> float:
    """Sum of per-image bpd over ``images`` (uint8 [N, C, H, W]) with fixed dequantisation
    noise; with ``world_size`` ranks, batch i is this rank's when i % world_size == rank, and
    every rank draws the noise of every batch, so the ranks' sums add up to the one-process sum."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    n_dims = math.prod(images.shape[1:])
    total = 0.0
    for index, start in enumerate(range(0, len(images), batch_size)):
        x = preprocess(images[start : start + batch_size], n_bits, generator=generator)
        if index % world_size == rank:
            total += bits_per_dim(model.log_prob(x.to(device)), n_dims, n_bits).double().sum().item()
    model.train(was_training)
    return total
