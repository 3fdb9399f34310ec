"""The coupling layer and its elementwise maps, affine and additive (Glow, section 3.3 and
Table 1; RealNVP). Maps and scale functions register under their config names.

The input splits along channels into ``xa`` (first half, passed through) and ``xb`` (second
half, transformed). The network ``NN(xa)`` is 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> a
zero-initialised 3x3 conv, so every coupling starts as the identity (section 3.3). As in the
official code, the first two convolutions use ActNorm instead of a bias (optional), the last
one scales its output by ``exp(factor * logs)`` with factor 3, and its output channels are
read interleaved: shift = h[:, 0::2], scale input = h[:, 1::2].

Both scale functions use the official composition ``yb = (xb + shift) * scale``:
``sigmoid`` is ``sigmoid(h + 2)`` (official code; bounded in (0, 1), openai/glow#62),
``exp`` is ``exp(h)`` (the paper's Table 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from glow_repro.core.flows.actnorm import ActNorm
from glow_repro.core.flows.base import FlowLayer
from glow_repro.core.registry import COUPLINGS, SCALES


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to zero whose output is scaled by ``exp(factor * logs)``."""

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        assert self.conv.bias is not None  # made with a bias
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(x) * s == conv with weight * s and bias * s: one pass instead of two
        scale = torch.exp(self.logs * self.logscale_factor).flatten()
        bias = self.conv.bias
        assert bias is not None  # made with a bias
        return F.conv2d(x, self.conv.weight * scale.view(-1, 1, 1, 1), bias * scale, padding=1)


class _NormedConv(nn.Module):
    """Conv followed by ActNorm (official code) or a plain conv with bias.

    Once the ActNorm is initialised, ``(conv(x) + b) * s`` runs as one convolution with
    weight ``W * s`` and bias ``b * s`` (the same function, without two elementwise passes
    over the widest tensors of the model).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, actnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not actnorm)
        nn.init.normal_(self.conv.weight, std=0.05)
        self.norm = ActNorm(out_channels) if actnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return self.conv(x)
        if self.training and not self.norm.is_initialized:
            return self.norm(self.conv(x))[0]  # data-dependent init sees the conv output
        scale = torch.exp(self.norm.logs).flatten()
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, self.norm.bias.flatten() * scale, padding=self.conv.padding)


class CouplingNN(nn.Module):
    """The coupling network of Glow section 3.3: conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv3x3."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int,
        *,
        actnorm: bool = True,
        zero_logscale_factor: float = 3.0,
    ):
        super().__init__()
        self.layers = nn.Sequential(
            # in place: a convolution's backward needs its input, not its output
            _NormedConv(in_channels, width, 3, actnorm),
            nn.ReLU(inplace=True),
            _NormedConv(width, width, 1, actnorm),
            nn.ReLU(inplace=True),
            ZeroConv2d(width, out_channels, zero_logscale_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under bf16 autocast only the convolutions run in bf16; shift, scale and log-det
        # come back in the flow's own dtype
        return self.layers(x).to(x.dtype)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = x.shape[1] // 2
    return x[:, :half], x[:, half:]


class ElementwiseMap(Protocol):
    """What a coupling asks of its map: ``params`` network outputs per transformed channel,
    ``forward``/``inverse`` of ``xb`` given them with the log-det per example, and the named
    health signals (``signals``) the stability monitor compares with its thresholds."""

    params: int

    def forward(self, xb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, yb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def signals(self, h: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Additive:
    """``yb = xb + h``: volume-preserving (NICE; Glow's additive variant)."""

    params = 1  # network outputs per transformed channel

    def forward(self, xb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return xb + h, xb.new_zeros(xb.shape[0])

    def inverse(self, yb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return yb - h, yb.new_zeros(yb.shape[0])

    def signals(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


class Affine:
    """``yb = (xb + shift) * scale`` with ``shift = h[:, 0::2]`` and ``scale = scale_fn(h[:, 1::2])``
    (Glow, Table 1; the official code's composition and channel interleaving)."""

    params = 2

    def __init__(self, scale_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.scale_fn = scale_fn

    def forward(self, xb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, log_scale = self.scale_fn(h[:, 1::2])
        return (xb + h[:, 0::2]) * scale, log_scale.flatten(1).sum(1)

    def inverse(self, yb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, log_scale = self.scale_fn(h[:, 1::2])
        return yb / scale - h[:, 0::2], -log_scale.flatten(1).sum(1)

    def signals(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The range of the scale, for the stability monitor."""
        low, high = torch.aminmax(self.scale_fn(h[:, 1::2])[0])
        return {"affine_scale_min": low, "affine_scale_max": high}


class Coupling(FlowLayer):
    """``ya = xa``, ``yb = map(xb; NN(xa))`` for an elementwise ``transform`` (Glow, section 3.3).

    The transform is a plain object without weights (:class:`Affine`, :class:`Additive`), so
    every coupling's ``state_dict`` holds just the network under ``nn.``.
    """

    def __init__(self, channels: int, width: int, transform: ElementwiseMap, **nn_options: Any):
        super().__init__()
        self.transform = transform
        out_channels = transform.params * (channels - channels // 2)
        self.nn = CouplingNN(channels // 2, out_channels, width, **nn_options)
        self.recording = False
        self.recorded: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = _halves(x)
        h = self.nn(xa)
        if self.recording:
            self.recorded = self.transform.signals(h.detach())
        yb, logdet = self.transform.forward(xb, h)
        return torch.cat([xa, yb], 1), logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ya, yb = _halves(y)
        xb, logdet = self.transform.inverse(yb, self.nn(ya))
        return torch.cat([ya, xb], 1), logdet

    def record_health(self, enabled: bool) -> None:
        self.recording = enabled
        self.recorded = {}

    def health(self) -> dict[str, float]:
        """The transform's signals (the affine scale range) from the last recorded forward."""
        return {name: float(value) for name, value in self.recorded.items()}


def sigmoid_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sigmoid(h + 2)``: the official code's scale, bounded in (0, 1) (openai/glow#62)."""
    return torch.sigmoid(h + 2.0), F.logsigmoid(h + 2.0)


def exp_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(h)``: the paper's scale (Glow, Table 1)."""
    return torch.exp(h), h


SCALES.register("sigmoid", sigmoid_scale)
SCALES.register("exp", exp_scale)
COUPLINGS.register("affine", lambda model: Affine(SCALES[model.scale]))
COUPLINGS.register("additive", lambda model: Additive())
