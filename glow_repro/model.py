"""Glow: the multi-scale flow of Kingma & Dhariwal 2018 (section 3, Figure 2b).

Each of the L levels squeezes, applies K flow steps and, except the last, splits off half of
the channels under a learned conditional prior; the final latent has the top prior.
``log_prob`` is the exact log-density (nats) of the preprocessed continuous input by the
change of variables: the sum of all layers' log-dets plus every factored-out latent's prior.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from glow_repro.config import ModelConfig
from glow_repro.flows import FlowStep, Split, Squeeze, TopPrior


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of a run's weights and batches (``train.channels_last``). Sampling
    and replays use the run's own, so they reproduce its floats exactly."""
    return torch.channels_last if channels_last else torch.contiguous_format


class _Level(nn.Module):
    def __init__(self, channels: int, config: ModelConfig, split: bool):
        super().__init__()
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(
            FlowStep(channels * 4, config) for _ in range(config.depth)
        )
        self.split = Split(channels * 4, config.zero_conv_logscale_factor) if split else None


class Glow(nn.Module):
    """``encode``, ``decode``, ``log_prob`` and ``sample`` for images of shape ``image_shape``."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = image_shape
        factor = 2**config.levels
        if h % factor or w % factor:
            raise ValueError(f"image {h}x{w} is not divisible by 2^levels = {factor}")
        self.config = config
        self.image_shape = tuple(image_shape)
        levels = []
        for index in range(config.levels):
            last = index == config.levels - 1
            levels.append(_Level(c, config, split=not last))
            c, h, w = (c * 4 if last else c * 2), h // 2, w // 2
        self.levels = nn.ModuleList(levels)
        self.top_prior = TopPrior((c, h, w), config.learn_top, config.zero_conv_logscale_factor)
        #: Recompute each flow step's activations in backward instead of storing them, as the
        #: official code does; saves memory, costs one more forward.
        self.grad_checkpointing = False

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        log_prior = x.new_zeros(x.shape[0])
        zs = []
        for level in self.levels:
            x, _ = level.squeeze(x)
            for step in level.steps:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x, step_logdet = checkpoint(step, x, use_reentrant=False)
                else:
                    x, step_logdet = step(x)
                logdet = logdet + step_logdet
            if level.split is not None:
                x, z, split_log_prior = level.split.split(x)
                zs.append(z)
                log_prior = log_prior + split_log_prior
        zs.append(x)
        return zs, logdet, log_prior + self.top_prior.log_density(x)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents ``[z_1, ..., z_L]`` (factored-out ones first, the top one last) and log-det."""
        zs, logdet, _ = self._encode(x)
        return zs, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats per example, priors included."""
        _, logdet, log_prior = self._encode(x)
        return logdet + log_prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def _decode(self, top: torch.Tensor, factored: list[torch.Tensor | None],
                temperature: float) -> torch.Tensor:
        x = top
        for level, z in zip(reversed(self.levels), reversed([*factored, None]), strict=True):
            if level.split is not None:
                x = level.split.merge(x, z, temperature)
            for step in reversed(level.steps):
                x, _ = step.inverse(x)
            x, _ = level.squeeze.inverse(x)
        return x

    def decode(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`encode`."""
        return self._decode(zs[-1], list(zs[:-1]), temperature=1.0)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Draw ``n`` images with every prior's std scaled by ``temperature`` (Glow, section 5)."""
        top = self.top_prior.sample(n, temperature)
        return self._decode(top, [None] * (len(self.levels) - 1), temperature)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
