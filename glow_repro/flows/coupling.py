"""Affine and additive coupling layers (Glow, section 3.3 and Table 1; RealNVP).

The input splits along channels into ``xa`` (first half, passed through) and ``xb`` (second
half, transformed). The network ``NN(xa)`` is 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> a
zero-initialised 3x3 conv, so every coupling starts as the identity (section 3.3). As in the
official code, the first two convolutions use ActNorm instead of a bias (optional), the last
one scales its output by ``exp(factor * logs)`` with factor 3, and its output channels are
read interleaved: shift = h[:, 0::2], scale input = h[:, 1::2].

Both scale functions use the official composition ``yb = (xb + shift) * scale``:
``sigmoid`` is ``sigmoid(h + 2)`` (official code; bounded in (0, 1), openai/glow issue #62),
``exp`` is ``exp(h)`` (the paper's Table 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from glow_repro.flows.actnorm import ActNorm
from glow_repro.flows.base import FlowLayer


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to zero whose output is scaled by ``exp(factor * logs)``."""

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(x) * s == conv with weight * s and bias * s: one pass instead of two
        scale = torch.exp(self.logs * self.logscale_factor).flatten()
        return F.conv2d(x, self.conv.weight * scale.view(-1, 1, 1, 1), self.conv.bias * scale, padding=1)


class _NormedConv(nn.Module):
    """Conv followed by ActNorm (official code) or a plain conv with bias.

    Once the ActNorm is initialised, ``(conv(x) + b) * s`` runs as one convolution with
    weight ``W * s`` and bias ``b * s`` (the same function, without two elementwise passes
    over the widest tensors of the model; issue #7).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, actnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not actnorm)
        nn.init.normal_(self.conv.weight, std=0.05)
        self.norm = ActNorm(out_channels) if actnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return self.conv(x)
        if self.training and not self.norm.initialized:
            return self.norm(self.conv(x))[0]  # data-dependent init sees the conv output
        scale = torch.exp(self.norm.logs).flatten()
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, self.norm.bias.flatten() * scale, padding=self.conv.padding)


class CouplingNN(nn.Module):
    """The coupling network of Glow section 3.3: conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv3x3."""

    def __init__(self, in_channels: int, out_channels: int, width: int, *,
                 actnorm: bool = True, zero_logscale_factor: float = 3.0):
        super().__init__()
        self.layers = nn.Sequential(
            # in place: a convolution's backward needs its input, not its output
            _NormedConv(in_channels, width, 3, actnorm), nn.ReLU(inplace=True),
            _NormedConv(width, width, 1, actnorm), nn.ReLU(inplace=True),
            ZeroConv2d(width, out_channels, zero_logscale_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under bf16 autocast only the convolutions run in bf16; shift, scale and log-det
        # come back in the flow's own dtype (issue #7)
        return self.layers(x).to(x.dtype)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = x.shape[1] // 2
    return x[:, :half], x[:, half:]


class AdditiveCoupling(FlowLayer):
    """``yb = xb + NN(xa)``: volume-preserving (NICE / Glow's additive variant)."""

    def __init__(self, channels: int, width: int, **nn_options: float | bool):
        super().__init__()
        self.nn = CouplingNN(channels // 2, channels - channels // 2, width, **nn_options)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = _halves(x)
        return torch.cat([xa, xb + self.nn(xa)], 1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ya, yb = _halves(y)
        return torch.cat([ya, yb - self.nn(ya)], 1), y.new_zeros(y.shape[0])


def _sigmoid_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(h + 2.0), F.logsigmoid(h + 2.0)


def _exp_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.exp(h), h


SCALE_FUNCTIONS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "sigmoid": _sigmoid_scale,
    "exp": _exp_scale,
}


class AffineCoupling(FlowLayer):
    """``yb = (xb + shift) * scale`` with ``(shift, scale) = NN(xa)`` (Glow, Table 1)."""

    def __init__(self, channels: int, width: int, scale: str = "sigmoid", **nn_options: float | bool):
        super().__init__()
        if scale not in SCALE_FUNCTIONS:
            raise ValueError(f"scale must be one of {sorted(SCALE_FUNCTIONS)}, got {scale!r}")
        self.scale_fn = SCALE_FUNCTIONS[scale]
        self.nn = CouplingNN(channels // 2, 2 * (channels - channels // 2), width, **nn_options)
        #: When set, forward keeps (min, max) of the scale for the stability monitor (issue #5).
        self.record_scale = False
        self.scale_range: tuple[torch.Tensor, torch.Tensor] | None = None

    def shift_and_scale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift, scale, log scale) for the transformed half."""
        h = self.nn(xa)
        scale, log_scale = self.scale_fn(h[:, 1::2])
        return h[:, 0::2], scale, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = _halves(x)
        shift, scale, log_scale = self.shift_and_scale(xa)
        if self.record_scale:
            self.scale_range = torch.aminmax(scale.detach())
        return torch.cat([xa, (xb + shift) * scale], 1), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ya, yb = _halves(y)
        shift, scale, log_scale = self.shift_and_scale(ya)
        return torch.cat([ya, yb / scale - shift], 1), -log_scale.flatten(1).sum(1)
