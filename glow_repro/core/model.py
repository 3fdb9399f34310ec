"""Glow: the multi-scale flow of Kingma & Dhariwal 2018 (section 3, Figure 2b).

Each of the L levels squeezes, applies K flow steps and, except the last, splits off half of
the channels under a learned conditional prior; the final latent has the top prior.
``log_prob`` is the exact log-density (nats) of the preprocessed continuous input by the
change of variables: the sum of all layers' log-dets plus every factored-out latent's prior.

A class-conditional Glow (``model.conditioning: class``, the official code's ``--ycond``) has
the same invertible flow; only the priors read the label y (the top prior always, the split
priors with ``model.conditional_splits``), and a linear classifier on the spatial mean of the
top latent gives class logits for the objective's ``class_weight`` term. ``log_prob(x, y)``
is then log p(x | y); without y it is the marginal log p(x) = logsumexp_y [log p(x | y) +
log p(y)] under the uniform class prior p(y) = 1 / n_classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from glow_repro.core.config import ModelConfig
from glow_repro.core.flows import FlowStep, Split, Squeeze, TopPrior
from glow_repro.core.flows.multiscale import LinearZeros
from glow_repro.core.flows.permute import dense_log_abs_dets


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of a run's weights and batches (``train.channels_last``). Sampling
    and replays use the run's own, so they reproduce its floats exactly."""
    return torch.channels_last if channels_last else torch.contiguous_format


class _Level(nn.Module):
    def __init__(self, channels: int, config: ModelConfig, split: bool, split_classes: int):
        super().__init__()
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(FlowStep(channels * 4, config) for _ in range(config.depth))
        self.split = Split(channels * 4, config.zero_conv_logscale_factor, split_classes) if split else None

    @property
    def flow_steps(self) -> Sequence[FlowStep]:
        """``steps`` as the type checker should see them (torch types a ModuleList's items as
        plain Modules)."""
        return cast("Sequence[FlowStep]", self.steps)


class Glow(nn.Module):
    """``encode``, ``decode``, ``log_prob`` and ``sample`` for images of shape ``image_shape``;
    ``n_classes`` is the number of classes a class-conditional model tells apart."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], n_classes: int = 0):
        super().__init__()
        c, h, w = image_shape
        factor = 2**config.levels
        if h % factor or w % factor:
            raise ValueError(f"image {h}x{w} is not divisible by 2^levels = {factor}")
        conditional = config.conditioning == "class"
        if conditional and n_classes < 2:
            raise ValueError(f"model.conditioning=class needs 2 or more classes, got {n_classes}")
        self.config = config
        self.image_shape = tuple(image_shape)
        self.n_classes = n_classes if conditional else 0
        split_classes = self.n_classes if config.conditional_splits else 0
        levels = []
        for index in range(config.levels):
            last = index == config.levels - 1
            levels.append(_Level(c, config, split=not last, split_classes=split_classes))
            c, h, w = (c * 4 if last else c * 2), h // 2, w // 2
        self.levels = nn.ModuleList(levels)
        self.top_prior = TopPrior((c, h, w), config.learn_top, config.zero_conv_logscale_factor, self.n_classes)
        #: Logits of the class from the spatial mean of the top latent (official ``--ycond``).
        self.classifier = LinearZeros(c, self.n_classes, config.zero_conv_logscale_factor) if conditional else None
        #: Recompute each flow step's activations in backward instead of storing them, as the
        #: official code does; saves memory, costs one more forward.
        self.grad_checkpointing = False

    @property
    def _levels(self) -> Sequence[_Level]:
        """``levels`` as the type checker should see them (see :attr:`_Level.flow_steps`)."""
        return cast("Sequence[_Level]", self.levels)

    def _flow(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The latents ``[z_1, ..., z_L]``, the kept half each split's prior reads, the log-det."""
        logdet = x.new_zeros(x.shape[0])
        zs, kept = [], []
        for level in self._levels:
            x, _ = level.squeeze(x)
            log_abs_dets = dense_log_abs_dets([step.permutation for step in level.flow_steps])
            for step, log_abs_det in zip(level.flow_steps, log_abs_dets, strict=True):
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x, step_logdet = checkpoint(step, x, log_abs_det, use_reentrant=False)
                else:
                    x, step_logdet = step(x, log_abs_det)
                logdet = logdet + step_logdet
            if level.split is not None:
                x, z = level.split.halves(x)
                kept.append(x)
                zs.append(z)
        zs.append(x)
        return zs, kept, logdet

    def _log_prior(self, zs: list[torch.Tensor], kept: list[torch.Tensor], y: torch.Tensor | None) -> torch.Tensor:
        """Every latent's prior log-density, given the labels ``y`` where the priors read them."""
        log_prior = zs[-1].new_zeros(zs[-1].shape[0])
        splits = [level.split for level in self._levels if level.split is not None]
        for split, z1, z2 in zip(splits, kept, zs[:-1], strict=True):
            log_prior = log_prior + split.log_density(z1, z2, y=y)
        return log_prior + self.top_prior.log_density(zs[-1], y=y)

    def _log_prior_per_class(self, zs: list[torch.Tensor], kept: list[torch.Tensor]) -> torch.Tensor:
        """``[batch, n_classes]``: the priors' log-density under every class."""
        labels = torch.arange(self.n_classes, device=zs[-1].device)
        return torch.stack([self._log_prior(zs, kept, label.expand(zs[-1].shape[0])) for label in labels], 1)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents ``[z_1, ..., z_L]`` (factored-out ones first, the top one last) and log-det.
        The flow reads no labels, so a conditional model encodes without them too."""
        zs, _, logdet = self._flow(x)
        return zs, logdet

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats per example, priors included; log p(x | y) given the labels ``y``
        of a class-conditional model, whose log p(x) is the marginal over classes."""
        self._check_labels(y)
        zs, kept, logdet = self._flow(x)
        if self.n_classes and y is None:
            per_class = self._log_prior_per_class(zs, kept)
            return logdet + torch.logsumexp(per_class, 1) - math.log(self.n_classes)
        return logdet + self._log_prior(zs, kept, y)

    def log_prob_per_class(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-conditional model's ``[batch, n_classes]`` log p(x | y) for every class y, and
        its classifier's logits, from one pass of the flow."""
        if not self.n_classes:
            raise ValueError("log_prob_per_class needs a class-conditional model (model.conditioning=class)")
        zs, kept, logdet = self._flow(x)
        return logdet[:, None] + self._log_prior_per_class(zs, kept), self._class_logits(zs[-1])

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The objective's terms: log p(x); given labels (a class-conditional model),
        ``(log p(x | y), class logits)`` from one pass of the flow."""
        if y is None:
            return self.log_prob(x)
        self._check_labels(y)
        zs, kept, logdet = self._flow(x)
        return logdet + self._log_prior(zs, kept, y), self._class_logits(zs[-1])

    def _class_logits(self, top: torch.Tensor) -> torch.Tensor:
        assert self.classifier is not None
        return self.classifier(top.mean((2, 3))).float()

    def _check_labels(self, y: torch.Tensor | None) -> None:
        if y is not None and not self.n_classes:
            raise ValueError("this model is unconditional (model.conditioning=none): it takes no labels")

    def _decode(
        self,
        top: torch.Tensor,
        factored: list[torch.Tensor | None],
        temperature: float,
        *,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = top
        for level, z in zip(reversed(self._levels), reversed([*factored, None]), strict=True):
            if level.split is not None:
                x = level.split.merge(x, z, temperature, y=y)
            for step in reversed(level.flow_steps):
                x, _ = step.inverse(x)
            x, _ = level.squeeze.inverse(x)
        return x

    def decode(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`encode`."""
        return self._decode(zs[-1], list(zs[:-1]), temperature=1.0)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` images with every prior's std scaled by ``temperature`` (Glow, section 5);
        a class-conditional model draws them of class ``y`` (one class, or one per image),
        else of classes drawn uniformly."""
        labels = self.sample_labels(n, y)
        top = self.top_prior.sample(n, temperature, y=labels)
        return self._decode(top, [None] * (len(self.levels) - 1), temperature, y=labels)

    def sample_labels(self, n: int, y: int | torch.Tensor | None) -> torch.Tensor | None:
        """``y`` as ``n`` class indices on the model's device, checked against ``n_classes``."""
        self._check_labels(None if y is None else torch.as_tensor(y))
        if not self.n_classes:
            return None
        device = self.top_prior.bias.device
        if y is None:
            return torch.randint(self.n_classes, (n,), device=device)
        labels = torch.as_tensor(y, device=device).long().expand(n)
        outside = labels[(labels < 0) | (labels >= self.n_classes)]
        if len(outside):
            raise ValueError(
                f"class {outside[0].item()} is out of range: this model has "
                f"{self.n_classes} classes, 0..{self.n_classes - 1}"
            )
        return labels

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
