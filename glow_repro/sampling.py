"""Samples, reconstructions and latent interpolations of a trained run (issue #6).

``load_trained_model`` rebuilds a run's model from its ``config.yaml`` and ``checkpoint.pt``
(the EMA weights when the run kept them, as its evaluations did). The image functions take a
model and tensors and return model-space images; ``write_figures`` turns them into the PNG grids
and the ``sample.json`` record of ``glow-repro sample``.

Temperature grids and reconstructions reuse :func:`glow_repro.evaluation.save_samples`, so
``glow-repro sample RUN_DIR`` with no options rewrites exactly the ``temperatures.png`` and
``reconstructions.png`` that training wrote at the end of the run. ``samples_T<t>.png`` draws
its own ``n`` samples with the generator reset to ``seed`` for each temperature, so a grid does
not depend on which other temperatures were asked for, and grids of different temperatures
share the same underlying noise (only its scale differs).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from glow_repro.config import RunConfig, load_run_config
from glow_repro.data import load_split
from glow_repro.errors import UserFacingError
from glow_repro.evaluation import png_bytes, save_samples
from glow_repro.model import Glow, memory_format
from glow_repro.objective import preprocess
from glow_repro.rundir import RunDir, atomic_write_bytes, atomic_write_json

#: What ``torch.load`` raises for a truncated, foreign or corrupt file.
_UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError)


class RunNotReadyError(UserFacingError):
    """RUN_DIR is not a run directory, has no checkpoint yet, or its checkpoint cannot be used."""


def _checkpoint_weights(state: object, config: RunConfig, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict to evaluate: the EMA's (an ``AveragedModel`` state_dict: keys prefixed
    ``module.`` plus ``n_averaged``) when the run used EMA, else the trained model's."""
    key = "ema" if config.train.ema_decay else "model"
    if not isinstance(state, dict) or not isinstance(state.get(key), dict):
        raise RunNotReadyError(f"{path}: not a glow-repro checkpoint (no {key!r} weights)")
    if key == "model":
        return state["model"]
    return {name.removeprefix("module."): value for name, value in state["ema"].items()
            if name.startswith("module.")}


def load_trained_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Glow]:
    """The run's resolved config and its model with the checkpoint's evaluation weights, in
    eval mode on ``device``."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        hint = (f"; it looks like a results directory, pass one of its runs: {run.path / 'runs'}/<run id>"
                if (run.path / "runs").is_dir() else "")
        raise RunNotReadyError(f"{run.path}: not a run directory (no config.yaml){hint}")
    config = load_run_config(run.config)
    if not run.checkpoint.is_file():
        raise RunNotReadyError(f"{run.path}: no checkpoint yet (run state: {run.status()['state']}); "
                               "sample again once training has saved one")
    try:
        state = torch.load(run.checkpoint, map_location=device, weights_only=True)
    except _UNREADABLE as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunNotReadyError(f"{run.checkpoint}: unreadable checkpoint ({first_line})") from None
    model = Glow(config.model, config.data.shape)
    try:
        model.load_state_dict(_checkpoint_weights(state, config, run.checkpoint))
    except RuntimeError as err:
        raise RunNotReadyError(f"{run.checkpoint}: its weights do not fit the model of "
                               f"{run.config} ({str(err).splitlines()[0]})") from None
    return config, model.to(device, memory_format=memory_format(config.train.channels_last)).eval()


@torch.no_grad()
def sample_images(model: Glow, temperature: float, n: int, seed: int) -> torch.Tensor:
    """``n`` samples at ``temperature`` (Glow, section 5) from a generator reset to ``seed``;
    the global random state is left as it was."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.sample(n, temperature=temperature)


@torch.no_grad()
def reconstruct(model: Glow, x: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)): equal to ``x`` up to float error when the flow is invertible."""
    zs, _ = model.encode(x)
    return model.decode(zs)


@torch.no_grad()
def interpolate(model: Glow, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode straight lines between the latents of ``a`` and ``b`` (Glow, section 6, Figure 5):
    every level z_1..z_L at ``alpha = 0, 1/(steps-1), ..., 1``; shape ``[len(a), steps, C, H, W]``.
    At alpha 0 and 1 the latents are exactly those of ``a`` and ``b`` (``torch.lerp``)."""
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
    alphas = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1, 1, 1)
    za, _ = model.encode(a)
    zb, _ = model.encode(b)
    lines = [torch.lerp(start.unsqueeze(1), end.unsqueeze(1), alphas).flatten(0, 1)
             for start, end in zip(za, zb, strict=True)]
    return model.decode(lines).unflatten(0, (len(a), steps))


def _name(temperature: float) -> str:
    return f"samples_T{temperature:g}.png"


def write_figures(model: Glow, config: RunConfig, out_dir: str | Path, *,
                  temperatures: tuple[float, ...] | None = None, n: int | None = None,
                  seed: int | None = None, pairs: int = 4, steps: int = 8,
                  about: dict | None = None) -> dict:
    """Write the sample grids, ``reconstructions.png``, ``interpolation.png`` and ``sample.json``
    under ``out_dir``; returns the record written to ``sample.json``.

    ``temperatures`` None means the paper's (``train.sample_temperatures``) as one grid
    ``temperatures.png``; given, each also gets ``samples_T<t>.png`` with ``n`` samples.
    ``n`` defaults to ``train.n_samples`` and ``seed`` to the run's seed. ``pairs`` pairs of
    distinct test images, drawn with ``seed``, are interpolated in ``steps`` steps, one per row.
    ``about`` (where the model came from) is stored in ``sample.json`` as it is.
    """
    out = Path(out_dir)
    device = next(model.parameters()).device
    n = n or config.train.n_samples
    seed = config.seed if seed is None else seed
    n_bits = config.data.n_bits
    test_images = load_split(config.data, "test").images
    if 2 * pairs > len(test_images):
        raise UserFacingError(f"{pairs} interpolation pairs (--interpolations) need {2 * pairs} test "
                              f"images; the test split of {config.data.dataset} has {len(test_images)}")
    files = []
    for temperature in temperatures or ():
        images = sample_images(model, temperature, n, seed)
        atomic_write_bytes(out / _name(temperature), png_bytes(images, n_bits, math.ceil(math.sqrt(n))))
        files.append(_name(temperature))
    record = save_samples(model, out, temperatures or config.train.sample_temperatures, n, n_bits,
                          test_images, device, seed)
    files += ["temperatures.png", "reconstructions.png", "samples.json"]

    order = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))[: 2 * pairs]
    x = preprocess(test_images[order], n_bits, noise=False).to(device)
    lines = interpolate(model, x[0::2], x[1::2], steps)
    atomic_write_bytes(out / "interpolation.png", png_bytes(lines.flatten(0, 1), n_bits, steps))
    files.append("interpolation.png")

    record = {
        **(about or {}),
        **record,
        "seed": seed,
        "device": str(device),
        "weights": "ema" if config.train.ema_decay else "model",
        "interpolation": {"pairs": order.view(pairs, 2).tolist(), "steps": steps},
        "files": [*files, "sample.json"],
    }
    atomic_write_json(out / "sample.json", record)
    return record
