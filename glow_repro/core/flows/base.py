"""The layer contract shared by every invertible layer, and a sequence that composes layers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn


class FlowLayer(nn.Module):
    """An invertible map ``x -> y`` with the log-determinant of its Jacobian per example."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def health(self) -> dict[str, float]:
        """Named health signals (scale range, conditioning, log-det) for the stability monitor;
        each name has a threshold in :class:`glow_repro.core.config.MonitorConfig`."""
        return {}

    def record_health(self, enabled: bool) -> None:
        """Keep what :meth:`health` needs from the next forward passes (off by default: it
        costs a reduction per step); layers whose signals come from their weights ignore it."""


class FlowSequence(FlowLayer):
    """Layers applied in order; log-dets add up, the inverse runs the layers backwards."""

    def __init__(self, layers: Iterable[FlowLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def flow_layers(self) -> Sequence[FlowLayer]:
        """``layers`` as the type checker should see them: torch types a ModuleList's items as
        plain Modules (it is not generic), and this one holds FlowLayers only."""
        return cast("Sequence[FlowLayer]", self.layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, logdet = layer(x)
            total = total + logdet
        return x, total

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = y.new_zeros(y.shape[0])
        for layer in reversed(self.flow_layers):
            y, logdet = layer.inverse(y)
            total = total + logdet
        return y, total


def pixels(x: torch.Tensor) -> int:
    """Spatial positions per example: a per-channel log-scale counts once per pixel."""
    return x.shape[2] * x.shape[3]
