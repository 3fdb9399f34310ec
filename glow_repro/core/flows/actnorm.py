"""ActNorm: per-channel affine with data-dependent initialisation (Glow, section 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from glow_repro.core.flows.base import FlowLayer, pixels


class ActNorm(FlowLayer):
    """``y = (x + bias) * exp(logs)``, per channel.

    On the first forward pass in training mode the layer sets ``bias`` and ``logs`` so that
    its output has zero mean and unit variance per channel on that batch (section 3.1). The
    ``initialized`` flag is a buffer, so it travels in ``state_dict`` and a loaded model never
    re-initialises; the forward pass reads its Python copy :attr:`is_initialized`, kept in
    step on init and on ``load_state_dict``, so it never waits for the device (and
    ``torch.compile`` sees no data-dependent branch). ``logscale_factor`` reparametrises
    ``logs = factor * raw`` as the official code does with factor 3 (it only rescales that
    parameter's effective step size).
    """

    initialized: torch.Tensor  # a buffer

    def __init__(self, channels: int, logscale_factor: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.raw_logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logscale_factor = logscale_factor
        self.scale = scale
        self.register_buffer("initialized", torch.tensor(False))
        self.is_initialized = False

    @property
    def logs(self) -> torch.Tensor:
        return self.raw_logs * self.logscale_factor

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and scale from a batch so the output is standardised per channel."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.raw_logs.copy_(torch.log(self.scale / (std + 1e-6)) / self.logscale_factor)
        self.initialized.fill_(True)
        self.is_initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "initialized" in state_dict:  # read once per load, from the loaded copy
            self.is_initialized = bool(state_dict[prefix + "initialized"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.is_initialized:
            self.initialize(x)
        logs = self.logs
        logdet = pixels(x) * logs.sum()
        return (x + self.bias) * torch.exp(logs), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logs = self.logs
        logdet = -pixels(y) * logs.sum()
        return y * torch.exp(-logs) - self.bias, logdet.expand(y.shape[0])

    def health(self) -> dict[str, float]:
        """The smallest scale, once the layer has been initialised."""
        if not self.is_initialized:
            return {}
        return {"actnorm_scale_min": float(self.logs.detach().cpu().exp().min())}
