"""Forensics of a bad step (README, "When training goes wrong"): which layer a non-finite value
started in, and a capsule that reproduces it.

* :func:`locate_nonfinite` re-runs one batch with hooks on every module and names the first
  module whose forward output (inputs finite) or whose input gradient (output gradient
  finite) is non-finite, on the objective the model was built for.
* A capsule (:func:`save_capsule`) holds the model state just before the bad step, the
  offending batch and the RNG state; :func:`replay_capsule` reproduces the finding.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glow_repro.core.config import RunConfig, validate_model
from glow_repro.core.model import Glow
from glow_repro.core.objectives import Batch, LossSettings, objective_of
from glow_repro.run.engine import build_model
from glow_repro.run.rundir import UnreadableFileError, atomic_write_bytes, read_torch_file

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
    that only bf16 autocast causes must show here too), on the objective the model was built
    for (a class-conditional run's batch with its ``labels``, the classifier's bits times
    ``class_weight`` included); name the first bad module."""
    objective = objective_of(model, LossSettings(n_bits, precision, class_weight))
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
        loss = objective.loss(model, x, labels).minimised
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
    kept = Batch(batch, labels).cpu()
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "batch": kept.x,
        "labels": kept.y,
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
