"""``checkpoint.pt``, its format and version, known here only (README, "Interrupting and
resuming").

A checkpoint holds what a run needs to go on bit-exactly (see :mod:`glow_repro.run.train`): the
step, the wall seconds spent, the recovery counters, the engine's weights (model, optimiser
and EMA state), the CPU RNG state and the stability monitor's running history. Training
reads all of it back (:meth:`Checkpoint.read`); sampling reads only the weights evaluations
use (:func:`evaluation_weights`).

Versions: files written before the format had a version are version 1, and the oldest of
them have no monitor history (read as an empty one); version 2 records its version. A file
of a later version than this module knows is refused with a one-line error.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glow_repro.run.rundir import UnreadableFileError, atomic_write_bytes, read_torch_file

#: The format version this module writes, and the latest it reads.
VERSION = 2

#: What to do about a checkpoint that training cannot use.
REMEDY = (
    "restore it from a backup, or move the run directory away and train the run again from the start "
    "(a study's `glow-repro run` then trains it in a new one)"
)

#: The engine's part of the file (:meth:`glow_repro.run.engine.Engine.state_dict`).
WEIGHTS = ("model", "optimizer", "ema")


@dataclass(frozen=True)
class Checkpoint:
    """Everything a run resumes from; ``weights`` is the engine's state (:data:`WEIGHTS`)."""

    step: int
    elapsed: float
    counters: dict[str, Any]
    weights: dict[str, Any]
    torch_rng: torch.Tensor
    monitor: dict[str, list[float]] | None

    def write(self, path: Path) -> None:
        """Write atomically: a kill leaves the previous checkpoint whole."""
        state = {
            "version": VERSION,
            "step": self.step,
            "elapsed": self.elapsed,
            "counters": self.counters,
            **{key: self.weights[key] for key in WEIGHTS},
            "torch_rng": self.torch_rng,
            "monitor": self.monitor,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """The checkpoint at ``path``, read onto the CPU (``torch.set_rng_state`` takes a CPU
        tensor only; the engine moves weights and optimiser state to the run's device), or a
        one-line :class:`UnreadableFileError` when it is damaged or of a later version."""
        load = functools.partial(torch.load, map_location="cpu", weights_only=False)
        keys = ("step", "elapsed", "counters", "model", "optimizer", "torch_rng")
        state = _read(path, load, keys, REMEDY)
        return cls(
            step=state["step"],
            elapsed=state["elapsed"],
            counters=state["counters"],
            weights={key: state.get(key) for key in WEIGHTS},
            torch_rng=state["torch_rng"],
            monitor=state.get("monitor"),
        )


def _read(path: Path, load: Callable[[Path], Any], keys: tuple[str, ...], remedy: str) -> dict[str, Any]:
    """The file's mapping, its version checked before its keys (a later version may have
    others): damage, a version this module does not know and a missing key are each a
    one-line :class:`UnreadableFileError`."""
    state = read_torch_file(path, load, what="checkpoint", keys=(), remedy=remedy)
    version = state.get("version", 1) if isinstance(state, dict) else 1
    if not isinstance(version, int) or version > VERSION:
        raise UnreadableFileError(
            f"{path}: a checkpoint of format version {version!r}, which this glow-repro does not know "
            f"(it reads versions 1 to {VERSION}); read it with the glow-repro that wrote it"
        )
    return read_torch_file(path, lambda _: state, what="checkpoint", keys=keys, remedy=remedy)


def evaluation_weights(path: Path, *, ema: bool, device: torch.device | str, remedy: str) -> dict[str, torch.Tensor]:
    """The model state_dict evaluations and samples use, read with ``weights_only``: the EMA's
    (an ``AveragedModel`` state_dict, keys prefixed ``module.`` plus ``n_averaged``) when the
    run kept one, else the trained model's; a damaged file names ``remedy``."""
    load = functools.partial(torch.load, map_location=device, weights_only=True)
    key = "ema" if ema else "model"
    state = _read(path, load, (key,), remedy)
    if not isinstance(state[key], dict):
        raise UnreadableFileError(f"{path}: not a glow-repro checkpoint (no {key!r} weights); {remedy}")
    if key == "model":
        return state["model"]
    return {name.removeprefix("module."): value for name, value in state["ema"].items() if name.startswith("module.")}
