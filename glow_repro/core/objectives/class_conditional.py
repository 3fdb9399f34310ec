"""The class-conditional objective, the official code's ``--ycond`` (Glow, section 5;
docs/fidelity.md): bpd of the images given their class plus ``model.class_weight`` times the
classifier's bits; tested as bpd given the label (the official test ``bits_x``), marginal bpd
and the classifier's accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from glow_repro.core.evaluation import class_sums
from glow_repro.core.model import Glow
from glow_repro.core.objective import conditional_training_loss, training_loss
from glow_repro.core.objectives.base import EvalSet, Loss, Objective
from glow_repro.core.registry import OBJECTIVES


class ClassConditional(Objective):
    """Each batch carries its class indices. A batch without them (a capsule written before
    capsules kept labels) is judged on the marginal bpd, which reads no classifier."""

    step_terms = ("train_class_bits",)
    eval_metrics = ("test_bpd", "test_bpd_marginal", "test_accuracy")

    def batch_labels(self, labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
        return labels[chosen]

    def loss(self, forward: Callable[..., Any], x: torch.Tensor, y: torch.Tensor | None) -> Loss:
        settings = self.settings
        if y is None:
            marginal = training_loss(forward, x, settings.n_bits, settings.precision)
            return Loss(marginal, marginal)
        minimised, bpd, bits_y = conditional_training_loss(
            forward, x, y, settings.n_bits, settings.class_weight, settings.precision
        )
        return Loss(minimised, bpd, (bits_y,))

    def eval_sums(self, model: Glow, data: EvalSet) -> list[float]:
        if data.labels is None:
            raise ValueError("a class-conditional evaluation needs the test images' labels")
        shard = {"rank": data.rank, "world_size": data.world_size}
        n_bits, batch_size = self.settings.n_bits, data.batch_size
        return class_sums(model, data.images, data.labels, n_bits, batch_size, data.device, **shard)


OBJECTIVES.register("class", ClassConditional)
