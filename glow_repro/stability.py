"""Stability: what went wrong, at which step, in which layer, and what training does next.

* :class:`StabilityMonitor` looks at every step: non-finite loss, gradients and parameters;
  upward spikes of the loss and of the gradient norm against a running median and MAD; and,
  every ``monitor.health_every`` steps, Glow's health signals — the range of the affine
  coupling scales, the worst condition number and smallest |det W| of the 1x1 convolutions,
  and the smallest ActNorm scale. Each finding is an event row.
* :func:`locate_nonfinite` re-runs one batch with hooks on every module and names the first
  module whose forward output (inputs finite) or whose input gradient (output gradient
  finite) is non-finite.
* A capsule (:func:`save_capsule`) holds the model state just before the bad step, the
  offending batch and the RNG state; :func:`replay_capsule` reproduces the finding.
* :class:`RecoveryPolicy` applies ``train.on_nonfinite`` to a bad step: ``stop`` (the run
  has diverged), ``skip`` the step, or ``rollback`` to the last checkpoint with a smaller
  learning rate, giving up after ``train.max_skips`` / ``train.max_rollbacks``.
"""

from __future__ import annotations

import functools
import io
import statistics
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from glow_repro.config import MonitorConfig, RunConfig, TrainConfig, validate_model
from glow_repro.engine import build_model
from glow_repro.flows import FlowLayer
from glow_repro.model import Glow
from glow_repro.objective import conditional_training_loss, training_loss
from glow_repro.rundir import UnreadableFileError, atomic_write_bytes, read_torch_file

#: Name given to the model itself when every submodule's output is finite but the priors or
#: the log-density are not.
PRIORS = "<priors>"


def _all_finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return all(_all_finite(v) for v in value if v is not None)
    return True


@dataclass(frozen=True)
class Finding:
    """Where a non-finite value first appeared: ``phase`` is forward, backward or none."""

    phase: str
    layer: str | None

    def describe(self) -> str:
        if self.phase == "none":
            return "no non-finite value on replay"
        return f"first non-finite {self.phase} value in {self.layer}"


def locate_nonfinite(
    model: Glow,
    x: torch.Tensor,
    n_bits: int,
    precision: str = "float32",
    *,
    labels: torch.Tensor | None = None,
    class_weight: float = 0.0,
) -> Finding:
    """Re-run forward and backward of one batch with hooks, in the run's precision (a fault
    that only bf16 autocast causes must show here too); name the first bad module. A
    class-conditional run's batch is re-run with its ``labels`` on the objective it trained
    on, the classifier's bits times ``class_weight`` included."""
    names = {module: name or PRIORS for name, module in model.named_modules()}
    found: dict[str, str] = {}

    def forward_hook(module, inputs, output):
        if "forward" not in found and _all_finite(inputs) and not _all_finite(output):
            found["forward"] = names[module]

    def backward_hook(module, grad_input, grad_output):
        if "backward" not in found and _all_finite(grad_output) and not _all_finite(grad_input):
            found["backward"] = names[module]

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_hook(forward_hook))
        handles.append(module.register_full_backward_hook(backward_hook))
    # backward hooks wrap module outputs, which autograd forbids modifying in place
    in_place: list[Any] = [module for module in model.modules() if getattr(module, "inplace", False)]
    for module in in_place:
        module.inplace = False
    try:
        model.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_(True)
        if labels is None:
            loss = training_loss(model, x, n_bits, precision)
        else:
            loss, _, _ = conditional_training_loss(model, x, labels, n_bits, class_weight, precision)
        if "forward" in found or not torch.isfinite(loss):
            return Finding("forward", found.get("forward", PRIORS))
        with warnings.catch_warnings():  # a class shift's only input, the labels, has no gradient
            warnings.filterwarnings("ignore", "Full backward hook is firing when gradients are computed", UserWarning)
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for module in in_place:
            module.inplace = True
        model.zero_grad(set_to_none=True)
    if "backward" in found:
        return Finding("backward", found["backward"])
    return Finding("none", None)


def save_capsule(
    path: Path,
    *,
    config: RunConfig,
    model: Glow,
    batch: torch.Tensor,
    step: int,
    lr: float,
    finding: Finding,
    labels: torch.Tensor | None = None,
) -> None:
    """The model state before the bad step, its batch (with its labels for a class-conditional
    run) and RNG state, for ``glow-repro replay``."""
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "batch": batch.detach().cpu(),
        "labels": None if labels is None else labels.detach().cpu(),
        "step": step,
        "lr": lr,
        "finding": {"phase": finding.phase, "layer": finding.layer},
        "torch_rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def replay_capsule(path: str | Path) -> tuple[int, Finding, Finding]:
    """Rebuild the model from a capsule and locate the fault again.

    Returns ``(step, recorded finding, replayed finding)``.
    """
    remedy = "replay takes a capsule a run wrote: <run>/capsules/step_*.pt"
    load = functools.partial(torch.load, map_location="cpu", weights_only=False)
    state = read_torch_file(
        path, load, what="capsule", remedy=remedy, keys=("config", "model", "batch", "step", "finding", "torch_rng")
    )
    config = validate_model(RunConfig, state["config"], f"{path} (its config)")
    model = build_model(config, "cpu")
    try:
        model.load_state_dict(state["model"])
        torch.set_rng_state(state["torch_rng"])
        recorded = Finding(**state["finding"])
    except (RuntimeError, TypeError, ValueError) as err:
        raise UnreadableFileError(f"{path}: a damaged capsule ({str(err).splitlines()[0][:160]}); {remedy}") from None
    model.train()
    finding = locate_nonfinite(
        model,
        state["batch"],
        config.data.n_bits,
        config.train.precision,
        labels=state.get("labels"),  # capsules of unconditional runs (and older ones) have none
        class_weight=config.model.class_weight,
    )
    return state["step"], recorded, finding


def health_signals(model: nn.Module) -> dict[str, tuple[float, str]]:
    """Every flow layer's health signals, each as ``(value, layer)`` of the worst layer; which
    end is worse is read from :attr:`StabilityMonitor.HEALTH_LIMITS`.

    Signals measured during a forward pass (the affine scale range) need ``record_health`` set
    on the layers during the last forward (:meth:`StabilityMonitor.record_scales`).
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

    def record_scales(self, enabled: bool) -> None:
        """Have the layers keep what the health check reads from the next forward passes, or not."""
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
