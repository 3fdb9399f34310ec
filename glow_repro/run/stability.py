"""Stability: what went wrong, at which step, in which layer, and what training does next.

* :class:`StabilityMonitor` looks at every step: non-finite loss, gradients and parameters;
  upward spikes of the loss and of the gradient norm against a running median and MAD; and,
  every ``monitor.health_every`` steps, Glow's health signals — the range of the affine
  coupling scales, the worst condition number and smallest |det W| of the 1x1 convolutions,
  and the smallest ActNorm scale. Each finding is an event row.
* :class:`RecoveryPolicy` applies ``train.on_nonfinite`` to a bad step: ``stop`` (the run
  has diverged), ``skip`` the step, or ``rollback`` to the last checkpoint with a smaller
  learning rate, giving up after ``train.max_skips`` / ``train.max_rollbacks``.

Which layer a bad step started in, and its capsule for ``glow-repro replay``, are
:mod:`glow_repro.run.forensics`'.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from glow_repro.core.config import MonitorConfig, TrainConfig
from glow_repro.core.flows import FlowLayer


def health_signals(model: nn.Module) -> dict[str, tuple[float, str]]:
    """Every flow layer's health signals, each as ``(value, layer)`` of the worst layer; which
    end is worse is read from :attr:`StabilityMonitor.HEALTH_LIMITS`.

    Signals measured during a forward pass (the affine scale range) need ``record_health`` set
    on the layers during the last forward (:meth:`StabilityMonitor.record_health`).
    """
    worst: dict[str, tuple[float, str]] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, FlowLayer):
                continue
            for kind, value in module.health().items():
                smaller_is_worse = StabilityMonitor.HEALTH_LIMITS[kind][1]
                if kind not in worst or (value < worst[kind][0]) == smaller_is_worse:
                    worst[kind] = (value, name)
    return worst


class StabilityMonitor:
    """Turns each step's numbers into event rows (see the module docstring)."""

    #: health signal -> (threshold attribute of MonitorConfig, event when the value is below it?)
    HEALTH_LIMITS: ClassVar[dict[str, tuple[str, bool]]] = {
        "affine_scale_min": ("min_affine_scale", True),
        "affine_scale_max": ("max_affine_scale", False),
        "conv1x1_condition": ("max_conv1x1_condition", False),
        "conv1x1_logabsdet_min": ("min_conv1x1_logabsdet", True),
        "actnorm_scale_min": ("min_actnorm_scale", True),
    }

    def __init__(self, config: MonitorConfig, model: nn.Module, run: str):
        self.config = config
        self.model = model
        self.run = run
        self.losses: deque[float] = deque(maxlen=config.spike_window)
        self.grad_norms: deque[float] = deque(maxlen=config.spike_window)
        # the model's parts, found once: a step walks lists, not the module tree
        self.flow_layers = [module for module in model.modules() if isinstance(module, FlowLayer)]
        self.parameters = list(model.parameters())
        self.recording = False

    def state_dict(self) -> dict[str, list[float]]:
        """The running history spikes are judged against; a checkpoint keeps it, so the
        events after a resume are those of an uninterrupted run."""
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, list[float]] | None) -> None:
        """Restore :meth:`state_dict` (None, from a checkpoint written before it was kept:
        an empty history)."""
        state = state or {}
        self.losses.clear()
        self.losses.extend(state.get("losses", []))
        self.grad_norms.clear()
        self.grad_norms.extend(state.get("grad_norms", []))

    def health_due(self, step: int) -> bool:
        return self.config.health_every > 0 and step % self.config.health_every == 0

    def record_health(self, enabled: bool) -> None:
        """Have the layers keep what the health check reads (every health signal measured in a
        forward pass) from the next forward passes, or not."""
        if enabled != self.recording:
            for layer in self.flow_layers:
                layer.record_health(enabled)
            self.recording = enabled

    def event(
        self,
        step: int,
        kind: str,
        value: float | None,
        threshold: float | None = None,
        layer: str | None = None,
        lr: float | None = None,
    ) -> dict:
        return {
            "run": self.run,
            "step": step,
            "kind": kind,
            "value": value,
            "threshold": threshold,
            "layer": layer,
            "lr": lr,
            "time": time.time(),
        }

    def _spike(self, history: deque[float], value: float, mads: float, relative: float) -> float | None:
        """The threshold ``value`` exceeded, or None: median + mads * 1.4826 MAD and (1 + relative) * median."""
        if len(history) < self.config.spike_warmup:
            return None
        median = statistics.median(history)
        mad = statistics.median(abs(v - median) for v in history)
        threshold = max(median + mads * 1.4826 * mad, median + relative * abs(median))
        return threshold if value > threshold else None

    def parameters_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.parameters])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def observe(self, step: int, loss: float, grad_norm: float, lr: float) -> list[dict]:
        """Events of a finite step: spikes and (when due) health; updates the running history."""
        cfg = self.config
        events = []
        for kind, history, value, mads, relative in (
            ("loss_spike", self.losses, loss, cfg.loss_spike_mads, cfg.loss_spike_relative),
            ("grad_norm_spike", self.grad_norms, grad_norm, cfg.grad_spike_mads, cfg.grad_spike_relative),
        ):
            threshold = self._spike(history, value, mads, relative)
            if threshold is not None:
                events.append(self.event(step, kind, value, threshold, lr=lr))
            history.append(value)
        if self.health_due(step):
            for kind, (value, layer) in health_signals(self.model).items():
                attribute, below = self.HEALTH_LIMITS[kind]
                limit = getattr(cfg, attribute)
                if (value < limit) if below else (value > limit):
                    events.append(self.event(step, kind, value, limit, layer, lr))
        return events


# -- recovery from a bad step ---------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """What to do about one bad step: ``action`` is stop, skip or rollback; ``diverged`` ends
    the run; ``gave_up`` says that a skip or rollback budget ran out."""

    action: str
    diverged: bool
    gave_up: bool


class RecoveryPolicy:
    """``train.on_nonfinite`` with its counters, which a checkpoint saves and a rollback keeps."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.skipped = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.first_nonfinite: int | None = None

    def counters(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
            "first_nonfinite": self.first_nonfinite,
        }

    def load_counters(self, counters: dict[str, Any]) -> None:
        self.skipped, self.rollbacks = counters["skipped"], counters["rollbacks"]
        self.lr_scale, self.first_nonfinite = counters["lr_scale"], counters["first_nonfinite"]

    def respond(self, kind: str, step: int) -> Response:
        """Count the bad ``step`` (a fault ``kind`` of the training step) and decide; a
        rollback that goes ahead scales the learning rate by ``train.rollback_lr_factor``."""
        cfg = self.config
        self.first_nonfinite = self.first_nonfinite or step
        action = cfg.on_nonfinite
        if kind == "nonfinite_parameters" and action == "skip":
            action = "stop"  # an update that was applied cannot be skipped; only a rollback undoes it
        gave_up = False
        if action == "skip":
            self.skipped += 1
            gave_up = self.skipped > cfg.max_skips
        elif action == "rollback":
            self.rollbacks += 1
            gave_up = self.rollbacks > cfg.max_rollbacks
            if not gave_up:
                self.lr_scale *= cfg.rollback_lr_factor
        return Response(action, diverged=action == "stop" or gave_up, gave_up=gave_up)
