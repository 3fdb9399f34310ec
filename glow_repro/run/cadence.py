"""When a run evaluates and checkpoints (README, "One run" and "Interrupting and resuming").

Evaluations come every ``train.eval_every`` steps or, with ``train.eval_every_epochs``, at the
first step that reaches each multiple of that many epochs. Checkpoints come every
``train.checkpoint_every`` steps and, with ``train.checkpoint_every_minutes``, also once that
much wall time passed since the last one: the run's results stay the same (everything is a
function of the step), only where a resume starts from depends on the clock.
"""

from __future__ import annotations

import time
from fractions import Fraction

from glow_repro.core.config import TrainConfig


def eval_due(step: int, cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """Whether the cadence of ``cfg`` evaluates after ``step``; an epoch is ``steps_per_epoch``
    steps. Epochs are taken as the decimal written in the config (0.3 is 3/10 exactly), so an
    evaluation never slips a step through float rounding."""
    if cfg.eval_every_epochs is None:
        assert cfg.eval_every is not None, "one cadence, checked by TrainConfig"
        return step % cfg.eval_every == 0
    interval = Fraction(str(cfg.eval_every_epochs)) * steps_per_epoch
    return step // interval > (step - 1) // interval


class CheckpointTimer:
    """Wall time since the last checkpoint against ``train.checkpoint_every_minutes``."""

    def __init__(self, minutes: float | None):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.restart()

    def restart(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.last >= self.seconds
