"""Test bpd, sample grids and the reconstruction check of a trained model (issue #3)."""

from __future__ import annotations

import io
import json
import math

import torch
from PIL import Image
from torchvision.utils import make_grid

from glow_repro.model import Glow
from glow_repro.objective import bits_per_dim, postprocess, preprocess
from glow_repro.rundir import atomic_write_bytes, atomic_write_json

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


def png_bytes(batch: torch.Tensor, n_bits: int, nrow: int) -> bytes:
    """A PNG grid of model-space images."""
    grid = make_grid(postprocess(batch.float().cpu(), n_bits), nrow=nrow, padding=1, pad_value=255)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def save_samples(model: Glow, out_dir, temperatures, n_samples: int, n_bits: int,
                 test_images: torch.Tensor, device: torch.device, seed: int) -> dict:
    """Write ``temperatures.png`` (one row per temperature), ``reconstructions.png`` (test
    images above their reconstructions) and ``samples.json`` with the reconstruction error."""
    model.eval()
    torch.manual_seed(seed)
    rows = [model.sample(n_samples, temperature=t).cpu() for t in temperatures]
    atomic_write_bytes(out_dir / "temperatures.png", png_bytes(torch.cat(rows), n_bits, n_samples))
    # centred in their bins, so reconstruction errors of 1e-7 cannot move a pixel a level
    x = (preprocess(test_images[:n_samples], n_bits, noise=False) + 0.5 / 2**n_bits).to(device)
    zs, _ = model.encode(x)
    reconstructed = model.decode(zs)
    error = (reconstructed - x).abs().max().item()
    atomic_write_bytes(out_dir / "reconstructions.png",
                       png_bytes(torch.cat([x, reconstructed]).cpu(), n_bits, len(x)))
    record = {
        "temperatures": list(temperatures),
        "n_samples": n_samples,
        "reconstruction_max_abs_error": error,
        "nonfinite_samples": int(sum((~torch.isfinite(r)).flatten(1).any(1).sum() for r in rows)),
    }
    atomic_write_json(out_dir / "samples.json", record)
    return record
