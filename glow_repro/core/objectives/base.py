"""What every objective is: the loss terms of a step, the sums of an evaluation and what
each logs, chosen once from the run's config (docs/architecture.md, "Adding an objective").

The bits-per-dimension arithmetic itself (dequantisation, the ``-D log(2^n_bits)`` term) is
:mod:`glow_repro.core.objective`'s; an objective decides which of it a run minimises (Glow,
section 5) and which labels a batch carries for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from glow_repro.core.registry import OBJECTIVES

if TYPE_CHECKING:
    from glow_repro.core.config import RunConfig
    from glow_repro.core.model import Glow


class Batch(NamedTuple):
    """A training batch: the model inputs ``x`` and the labels ``y`` its objective reads (None
    for an objective that reads none)."""

    x: torch.Tensor
    y: torch.Tensor | None

    def pinned(self) -> Batch:
        return Batch(self.x.pin_memory(), None if self.y is None else self.y.pin_memory())

    def to(self, device: torch.device, memory_format: torch.memory_format, *, non_blocking: bool) -> Batch:
        """On ``device``, the inputs in ``memory_format`` (the labels have no layout)."""
        x = self.x.to(device, memory_format=memory_format, non_blocking=non_blocking)
        return Batch(x, None if self.y is None else self.y.to(device, non_blocking=non_blocking))

    def cpu(self) -> Batch:
        """Detached CPU copies, as a capsule keeps them."""
        return Batch(self.x.detach().cpu(), None if self.y is None else self.y.detach().cpu())


class Loss(NamedTuple):
    """A step's terms, each a batch mean: what the optimiser minimises, the bpd (which the
    stability checks read) and the objective's other logged terms (:attr:`Objective.step_terms`)."""

    minimised: torch.Tensor
    bpd: torch.Tensor
    terms: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True)
class EvalSet:
    """What an evaluation goes through: the uint8 test ``images`` and their ``labels`` (None
    where nothing reads them), in batches of ``batch_size`` on ``device``, this rank's share of
    ``world_size`` data-parallel ranks."""

    images: torch.Tensor
    labels: torch.Tensor | None
    batch_size: int
    device: torch.device
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class LossSettings:
    """The config keys the built-in objectives read."""

    n_bits: int
    precision: str = "float32"
    class_weight: float = 0.0

    @classmethod
    def of(cls, config: RunConfig) -> LossSettings:
        return cls(config.data.n_bits, config.train.precision, config.model.class_weight)


class Objective:
    """One way to train and judge a Glow. A subclass registers itself in
    :data:`glow_repro.core.registry.OBJECTIVES` under a ``model.conditioning`` value."""

    #: The metrics row's names of :attr:`Loss.terms`, logged after ``train_bpd``.
    step_terms: ClassVar[tuple[str, ...]] = ()
    #: The evals row's names of :meth:`eval_sums`, in order; the first is ``test_bpd``.
    eval_metrics: ClassVar[tuple[str, ...]] = ("test_bpd",)

    def __init__(self, settings: LossSettings):
        self.settings = settings

    def batch_labels(self, labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
        """What a training batch of the images ``chosen`` carries of the split's ``labels``."""
        return None

    def loss(self, forward: Callable[..., Any], x: torch.Tensor, y: torch.Tensor | None) -> Loss:
        """The terms of the batch ``(x, y)`` through ``forward`` (a Glow, or its DDP or
        compiled wrapper), the forward pass in the run's precision."""
        raise NotImplementedError

    def eval_sums(self, model: Glow, data: EvalSet) -> list[float]:
        """Per-image sums of :attr:`eval_metrics` over this rank's share of ``data`` on fixed
        dequantisation noise: the ranks' sums add up to the one-process sums, and a mean is a
        sum over ``len(data.images)``."""
        raise NotImplementedError


def objective_for(config: RunConfig) -> Objective:
    """The run's objective, named by ``model.conditioning``."""
    return OBJECTIVES[config.model.conditioning](LossSettings.of(config))


def objective_of(model: Glow, settings: LossSettings) -> Objective:
    """The objective ``model`` was built for, named by its own config."""
    return OBJECTIVES[model.config.conditioning](settings)
