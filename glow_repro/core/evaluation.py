"""Test bits per dimension of a model (Glow, section 5) on fixed dequantisation noise; for a
class-conditional model also the marginal bpd and the classifier's accuracy."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from glow_repro.core.model import Glow
from glow_repro.core.objective import bits_per_dim, preprocess

#: Seed of the dequantisation noise used for every evaluation, so that evaluations at different
#: steps, and of different runs, see the same noisy test set (paired comparisons).
EVAL_NOISE_SEED = 20180709


def _batches(
    images: torch.Tensor, n_bits: int, batch_size: int, rank: int, world_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, preprocessed batch) of this rank's batches: batch i is its when i % world_size ==
    rank, and every rank draws the noise of every batch, so the noise does not depend on the
    number of ranks."""
    generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    for index, start in enumerate(range(0, len(images), batch_size)):
        x = preprocess(images[start : start + batch_size], n_bits, generator=generator)
        if index % world_size == rank:
            yield start, x


@torch.inference_mode()
def bpd_sum(
    model: Glow,
    images: torch.Tensor,
    n_bits: int,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Sum of per-image bpd over ``images`` (uint8 [N, C, H, W]) with fixed dequantisation
    noise; with ``world_size`` ranks the ranks' sums add up to the one-process sum."""
    was_training = model.training
    model.eval()
    n_dims = math.prod(images.shape[1:])
    total = 0.0
    for _, x in _batches(images, n_bits, batch_size, rank, world_size):
        total += bits_per_dim(model.log_prob(x.to(device)), n_dims, n_bits).double().sum().item()
    model.train(was_training)
    return total


@torch.inference_mode()
def class_sums(
    model: Glow,
    images: torch.Tensor,
    labels: torch.Tensor,
    n_bits: int,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> list[float]:
    """A class-conditional model's sums over ``images`` with the noise of :func:`bpd_sum`:
    bpd of x given its label, marginal bpd (log p(x) over the uniform class prior), and the
    number of images whose classifier argmax is their label."""
    was_training = model.training
    model.eval()
    n_dims = math.prod(images.shape[1:])
    sums = [0.0, 0.0, 0.0]
    for start, x in _batches(images, n_bits, batch_size, rank, world_size):
        y = labels[start : start + len(x)].to(device)
        per_class, logits = model.log_prob_per_class(x.to(device))
        given = per_class.gather(1, y[:, None]).squeeze(1)
        marginal = torch.logsumexp(per_class, 1) - math.log(per_class.shape[1])
        sums[0] += bits_per_dim(given, n_dims, n_bits).double().sum().item()
        sums[1] += bits_per_dim(marginal, n_dims, n_bits).double().sum().item()
        sums[2] += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return sums
