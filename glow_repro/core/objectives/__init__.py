"""What a run optimises and reports, one module per objective (docs/architecture.md,
"Adding an objective"). Importing this package registers the built-in ones under their
``model.conditioning`` names (glow_repro/core/registry.py)."""

from glow_repro.core.objectives import class_conditional, unconditional
from glow_repro.core.objectives.base import Batch, EvalSet, Loss, LossSettings, Objective, objective_for, objective_of

__all__ = [
    "Batch",
    "EvalSet",
    "Loss",
    "LossSettings",
    "Objective",
    "class_conditional",
    "objective_for",
    "objective_of",
    "unconditional",
]
