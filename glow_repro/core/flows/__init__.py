"""Invertible layers of Glow (Kingma & Dhariwal 2018, section 3): no optimiser, no files, no CLI.

Every layer maps ``forward(x) -> (y, logdet)`` and ``inverse(y) -> (x, logdet)`` with
``logdet`` of shape ``[batch]``; the inverse's log-det is the negative of the forward's.
Importing this package registers the couplings, scale functions and permutations under their
config names (glow_repro/core/registry.py).
"""

from glow_repro.core.flows.actnorm import ActNorm
from glow_repro.core.flows.base import FlowLayer, FlowSequence
from glow_repro.core.flows.coupling import Additive, Affine, Coupling, CouplingNN, ZeroConv2d
from glow_repro.core.flows.multiscale import FlowStep, Split, Squeeze, TopPrior
from glow_repro.core.flows.permute import InvConv1x1, InvConv1x1LU, Reverse, Shuffle

__all__ = [
    "ActNorm",
    "Additive",
    "Affine",
    "Coupling",
    "CouplingNN",
    "FlowLayer",
    "FlowSequence",
    "FlowStep",
    "InvConv1x1",
    "InvConv1x1LU",
    "Reverse",
    "Shuffle",
    "Split",
    "Squeeze",
    "TopPrior",
    "ZeroConv2d",
]
