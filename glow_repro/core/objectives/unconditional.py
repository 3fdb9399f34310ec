"""The unconditional objective (Glow, section 5): the mean bits per dimension of a batch,
and test bpd."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from glow_repro.core.evaluation import bpd_sum
from glow_repro.core.model import Glow
from glow_repro.core.objective import training_loss
from glow_repro.core.objectives.base import EvalSet, Loss, Objective
from glow_repro.core.registry import OBJECTIVES


class Unconditional(Objective):
    """Minimise the bpd of the images; the labels are not read."""

    def loss(self, forward: Callable[..., Any], x: torch.Tensor, y: torch.Tensor | None) -> Loss:
        bpd = training_loss(forward, x, self.settings.n_bits, self.settings.precision)
        return Loss(bpd, bpd)

    def eval_sums(self, model: Glow, data: EvalSet) -> list[float]:
        shard = {"rank": data.rank, "world_size": data.world_size}
        return [bpd_sum(model, data.images, self.settings.n_bits, data.batch_size, data.device, **shard)]


OBJECTIVES.register("none", Unconditional)
