"""Multi-scale pieces (Glow, section 3 and Figure 2b; RealNVP section 3.6): squeeze, the flow
step, the split with a learned conditional prior, and the learned top prior.

Priors built with ``n_classes`` are class-conditional as in the official code's ``--ycond``:
a zero-initialised linear map of the one-hot label y is added to the mean and log-scale, so
at initialisation they equal the unconditional prior (docs/fidelity.md). The labels are a
keyword argument, ``y``: class indices ``[batch]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glow_repro.core.config import ModelConfig
from glow_repro.core.flows.actnorm import ActNorm
from glow_repro.core.flows.base import FlowLayer, FlowSequence
from glow_repro.core.flows.coupling import Coupling, ZeroConv2d
from glow_repro.core.registry import COUPLINGS, PERMUTATIONS

LOG_2PI = math.log(2 * math.pi)


class Squeeze(FlowLayer):
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; channel c*4 + 2*dy + dx holds pixel (2i+dy, 2j+dx)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = y.shape
        x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, h * 2, w * 2), y.new_zeros(b)


class FlowStep(FlowSequence):
    """One step of flow: ActNorm -> permutation -> coupling (Glow, Figure 2a), each part the
    one the model config names in the registries."""

    def __init__(self, channels: int, config: ModelConfig):
        # the coupling is built first: the order in which weights draw from the RNG, so a seed
        # gives the same model as it always has
        transform = COUPLINGS[config.coupling](config)
        coupling = Coupling(
            channels,
            config.width,
            transform,
            actnorm=config.coupling_actnorm,
            zero_logscale_factor=config.zero_conv_logscale_factor,
        )
        super().__init__(
            [
                ActNorm(channels, logscale_factor=config.actnorm_logscale_factor),
                PERMUTATIONS[config.permutation](channels, config),
                coupling,
            ]
        )

    @property
    def permutation(self) -> FlowLayer:
        return self.flow_layers[1]

    def forward(
        self, x: torch.Tensor, conv1x1_log_abs_det: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv1x1_log_abs_det``: log|det W| of a dense 1x1 convolution, when the caller
        computed it with those of other steps (:func:`glow_repro.core.flows.permute.dense_log_abs_dets`)."""
        actnorm, permutation, coupling = self.layers
        x, actnorm_logdet = actnorm(x)
        if conv1x1_log_abs_det is None:
            x, permutation_logdet = permutation(x)
        else:
            x, permutation_logdet = permutation(x, conv1x1_log_abs_det)
        x, coupling_logdet = coupling(x)
        return x, actnorm_logdet + permutation_logdet + coupling_logdet


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch dimension of log N(x; mean, exp(logs)^2)."""
    elementwise = -0.5 * (LOG_2PI + 2.0 * logs + (x - mean) ** 2 * torch.exp(-2.0 * logs))
    return elementwise.flatten(1).sum(1)


def gaussian_sample(mean: torch.Tensor, logs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Draw from N(mean, (temperature * exp(logs))^2); temperature 0 gives the mean."""
    return mean + temperature * torch.exp(logs) * torch.randn_like(mean)


class LinearZeros(nn.Module):
    """Linear map initialised to zero whose output is scaled by ``exp(factor * logs)``: the
    official code's ``linear_zeros``, as :class:`ZeroConv2d` is its ``conv2d_zeros``. Its
    weights are zeros from the start, so building it draws no random numbers."""

    def __init__(self, in_features: int, out_features: int, logscale_factor: float = 3.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.logs = nn.Parameter(torch.zeros(out_features))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * torch.exp(self.logs * self.logscale_factor)


class ClassShift(nn.Module):
    """The class-dependent shift of a prior's (mean, log-scale) channels: ``LinearZeros`` of
    the one-hot label, constant over space; ``[batch, channels, 1, 1]`` in ``dtype``."""

    def __init__(self, n_classes: int, channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.n_classes = n_classes
        self.linear = LinearZeros(n_classes, channels, logscale_factor)

    def forward(self, y: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if y is None:
            raise ValueError("a class-conditional prior needs the labels y")
        # scatter, not F.one_hot: one_hot checks the labels' range on the host, a wait for the GPU
        onehot = torch.zeros(len(y), self.n_classes, dtype=self.linear.weight.dtype, device=y.device)
        onehot.scatter_(1, y[:, None], 1.0)
        return self.linear(onehot).to(dtype)[:, :, None, None]


class Split(nn.Module):
    """Factor out half the channels with a learned conditional prior p(z2 | z1) (RealNVP 3.6).

    ``halves(x) -> (z1, z2)`` with ``log_density(z1, z2)`` = log p(z2 | z1);
    ``merge(z1, z2=None, temperature)`` inverts it,
    drawing z2 from the prior when it is not given (sampling). With ``n_classes`` the prior is
    p(z2 | z1, y) (``model.conditional_splits``; the official code's splits ignore y).
    """

    def __init__(self, channels: int, zero_conv_logscale_factor: float = 3.0, n_classes: int = 0):
        super().__init__()
        self.keep = channels // 2
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep), zero_conv_logscale_factor)
        self.class_shift = (
            ClassShift(n_classes, 2 * (channels - self.keep), zero_conv_logscale_factor) if n_classes else None
        )

    def prior_params(self, z1: torch.Tensor, *, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.prior(z1).to(z1.dtype)  # priors stay in the flow's dtype under autocast
        if self.class_shift is not None:
            h = h + self.class_shift(y, h.dtype)
        return h[:, 0::2], h[:, 1::2]

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z1, z2): the kept channels and the factored-out ones."""
        return x[:, : self.keep], x[:, self.keep :]

    def log_density(self, z1: torch.Tensor, z2: torch.Tensor, *, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(z2 | z1[, y]) per example."""
        return gaussian_log_density(z2, *self.prior_params(z1, y=y))

    def merge(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor | None = None,
        temperature: float = 1.0,
        *,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if z2 is None:
            z2 = gaussian_sample(*self.prior_params(z1, y=y), temperature)
        return torch.cat([z1, z2], 1)


class TopPrior(nn.Module):
    """Gaussian prior of the final latent: learned per-channel mean and log-scale (``learn_top``)
    computed as the official code's zero-initialised conv of a zero input, else N(0, I); with
    ``n_classes``, plus the class shift of the label (official ``--ycond``)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        learn: bool = True,
        zero_conv_logscale_factor: float = 3.0,
        n_classes: int = 0,
    ):
        super().__init__()
        self.shape = shape
        channels = shape[0]
        self.learn = learn
        self.bias = nn.Parameter(torch.zeros(1, 2 * channels, 1, 1), requires_grad=learn)
        self.logs = nn.Parameter(torch.zeros(1, 2 * channels, 1, 1), requires_grad=learn)
        self.logscale_factor = zero_conv_logscale_factor
        self.class_shift = ClassShift(n_classes, 2 * channels, zero_conv_logscale_factor) if n_classes else None

    def params(self, batch: int, *, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.bias * torch.exp(self.logs * self.logscale_factor)
        h = h.expand(batch, -1, *self.shape[1:])
        if self.class_shift is not None:
            h = h + self.class_shift(y, h.dtype)
        return h[:, 0::2], h[:, 1::2]

    def log_density(self, z: torch.Tensor, *, y: torch.Tensor | None = None) -> torch.Tensor:
        return gaussian_log_density(z, *self.params(z.shape[0], y=y))

    def sample(self, n: int, temperature: float, *, y: torch.Tensor | None = None) -> torch.Tensor:
        return gaussian_sample(*self.params(n, y=y), temperature)
