"""Channel permutations between couplings (Glow, section 3.2 and Figure 3).

``Reverse`` is RealNVP's fixed reversal, ``Shuffle`` a fixed random permutation (drawn from
the global RNG, so it is reproducible from the run seed), and the invertible 1x1
convolution comes in the dense form (``InvConv1x1``; log|det W| in float64 as the official
code does) and the LU form (``InvConv1x1LU``; W = P L (U + diag(s)), P fixed, Glow eq. 10).
Both 1x1 forms start as a random rotation, so log|det W| = 0 at initialisation. Each
permutation and each 1x1 form registers under its config name at the end of this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glow_repro.core.flows.base import FlowLayer, pixels
from glow_repro.core.registry import CONV1X1_FORMS, PERMUTATIONS


def _no_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


class Reverse(FlowLayer):
    """Reverse the channel order (RealNVP); volume-preserving."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), _no_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.flip(1), _no_logdet(y)


class Shuffle(FlowLayer):
    """A fixed random channel permutation, kept in ``state_dict``; volume-preserving."""

    perm: torch.Tensor  # buffers
    inverse_perm: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        perm = torch.randperm(channels)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.perm], _no_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y[:, self.inverse_perm], _no_logdet(y)


def random_rotation(channels: int) -> torch.Tensor:
    """An orthogonal matrix from the QR decomposition of a Gaussian one (Glow, section 3.2)."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels))
    return q


def _matrix_health(weight: torch.Tensor) -> dict[str, float]:
    """Condition number and log|det W| of a 1x1 convolution's matrix, in float64 on a CPU
    copy (a small matrix: one transfer, no device work)."""
    weight = weight.detach().cpu().double()
    return {
        "conv1x1_condition": float(torch.linalg.cond(weight)),
        "conv1x1_logabsdet_min": float(torch.linalg.slogdet(weight)[1]),
    }


def _conv1x1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The invertible map itself never runs in reduced precision, even under autocast."""
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x, weight.to(x.dtype).unsqueeze(-1).unsqueeze(-1))


class InvConv1x1(FlowLayer):
    """Dense invertible 1x1 convolution; log|det W| and W^-1 computed in float64.

    ``forward`` takes log|det W| from its caller when given (a level computes those of all
    its steps in one batched call, :func:`dense_log_abs_dets`), else computes its own.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(random_rotation(channels))

    def forward(self, x: torch.Tensor, log_abs_det: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if log_abs_det is None:
            log_abs_det = torch.linalg.slogdet(self.weight.double())[1]
        return _conv1x1(x, self.weight), (pixels(x) * log_abs_det.to(x.dtype)).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w64 = self.weight.double()
        log_abs_det = torch.linalg.slogdet(w64)[1].to(y.dtype)
        return _conv1x1(y, torch.linalg.inv(w64)), (-pixels(y) * log_abs_det).expand(y.shape[0])

    def health(self) -> dict[str, float]:
        return _matrix_health(self.weight)


def dense_log_abs_dets(layers: Sequence[FlowLayer]) -> list[torch.Tensor | None]:
    """log|det W| in float64 of every dense 1x1 convolution among ``layers``, from one batched
    ``slogdet`` (one kernel instead of one per layer); None for every other layer."""
    dense = [layer for layer in layers if isinstance(layer, InvConv1x1)]
    if not dense:
        return [None] * len(layers)
    values = iter(torch.linalg.slogdet(torch.stack([layer.weight for layer in dense]).double())[1].unbind())
    return [next(values) if isinstance(layer, InvConv1x1) else None for layer in layers]


class InvConv1x1LU(FlowLayer):
    """LU-parametrised invertible 1x1 convolution: log|det W| = sum(log|s|) (Glow, eq. 10)."""

    p: torch.Tensor  # buffers
    sign_s: torch.Tensor
    lower_mask: torch.Tensor
    eye: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        p, lower, upper = torch.linalg.lu(random_rotation(channels))
        diag = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> torch.Tensor:
        """W = P (L + I) (U + diag(sign(s) exp(log|s|))), computed once per call."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = pixels(x) * self.log_s.sum()
        return _conv1x1(x, self.weight()), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inverse_weight = torch.linalg.inv(self.weight().double())
        logdet = -pixels(y) * self.log_s.sum()
        return _conv1x1(y, inverse_weight), logdet.expand(y.shape[0])

    def health(self) -> dict[str, float]:
        return _matrix_health(self.weight())


CONV1X1_FORMS.register("lu", InvConv1x1LU)
CONV1X1_FORMS.register("dense", InvConv1x1)
PERMUTATIONS.register("conv1x1", lambda channels, model: CONV1X1_FORMS[model.conv1x1_form](channels))
PERMUTATIONS.register("shuffle", lambda channels, model: Shuffle(channels))
PERMUTATIONS.register("reverse", lambda channels, model: Reverse())
