"""Preprocessing and the bits-per-dimension objective, exactly as the official Glow code
computes them (section 5; see docs/fidelity.md). Pure tensor functions, one place only.

Images of ``n_bits`` are mapped to ``x / 2^n_bits - 0.5`` and dequantised with
``U(0, 1 / 2^n_bits)`` noise. A density p on that continuous space gives the discrete data a
probability of about ``p(x) * (1 / 2^n_bits)^D``, hence

    bpd = -(log p(x) - D * log(2^n_bits)) / (D * log 2).
"""

from __future__ import annotations

import math

import torch


def quantize(images: torch.Tensor, n_bits: int) -> torch.Tensor:
    """8-bit integer images -> integers in [0, 2^n_bits) (drops the low bits)."""
    return torch.div(images.long(), 2 ** (8 - n_bits), rounding_mode="floor")


def preprocess(
    images: torch.Tensor,
    n_bits: int,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    within: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Quantise, scale to [-0.5, 0.5) and add uniform dequantisation noise of one bin.
    ``within=(start, total)``: ``images`` are rows ``start...`` of a batch of ``total``, whose
    noise the generator draws in full, so these rows get the values the whole batch would."""
    bins = 2**n_bits
    x = quantize(images, n_bits).to(dtype) / bins - 0.5
    if noise:
        start, total = within or (0, len(x))
        draws = torch.rand((total, *x.shape[1:]), generator=generator, dtype=dtype, device=x.device)
        x = x + draws[start : start + len(x)] / bins
    return x


def postprocess(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Model space -> 8-bit images (for saving samples)."""
    bins = 2**n_bits
    levels = torch.floor((x + 0.5) * bins).clamp(0, bins - 1)
    return (levels * (256 // bins)).to(torch.uint8)


def bits_per_dim(log_prob: torch.Tensor, n_dims: int, n_bits: int) -> torch.Tensor:
    """Bits per dimension of the discrete data from the continuous log-density (nats)."""
    discrete_log_prob = log_prob - n_dims * math.log(2**n_bits)
    return -discrete_log_prob / (n_dims * math.log(2.0))


def training_loss(forward, x: torch.Tensor, n_bits: int, precision: str = "float32") -> torch.Tensor:
    """Mean bpd of a batch through ``forward`` (a Glow, or its DDP / compiled wrapper). Under
    ``precision="bf16"`` only the forward runs in autocast; the loss is float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        log_prob = forward(x)
    return bits_per_dim(log_prob.float(), math.prod(x.shape[1:]), n_bits).mean()


def class_bits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the labels ``y`` under ``logits``, in bits per example (official ``bits_y``)."""
    return torch.nn.functional.cross_entropy(logits.float(), y, reduction="none") / math.log(2.0)


def conditional_training_loss(
    forward, x: torch.Tensor, y: torch.Tensor, n_bits: int, class_weight: float, precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official ``--ycond`` objective, mean bpd of x given y plus ``class_weight`` times the
    classifier's mean bits; returns (objective, bpd, class bits), each a batch mean."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        log_prob, logits = forward(x, y)
    bpd = bits_per_dim(log_prob.float(), math.prod(x.shape[1:]), n_bits).mean()
    bits_y = class_bits(logits, y).mean()
    return bpd + class_weight * bits_y, bpd, bits_y
