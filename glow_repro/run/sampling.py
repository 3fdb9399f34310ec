"""Samples, reconstructions and latent interpolations of a trained run (Glow, sections 5-6).

``load_trained_model`` rebuilds a run's model from its ``config.yaml`` and ``checkpoint.pt``
(the EMA weights when the run kept them, as its evaluations did). The image functions take a
model and tensors and return model-space images; :func:`write_samples`, the one writer of
sample files, turns them into pictures and a JSON record: training calls it at the end of a
run (record ``samples.json``, no interpolations), ``glow-repro sample`` calls it with the
user's options (record ``sample.json``). Each picture is a labelled figure ``<name>.figure.png``
with its native-resolution grid ``<name>.png`` beside it (:mod:`glow_repro.image_panels`,
docs/images.md); the names below are the grids'.

Both draw ``temperatures.png`` and ``reconstructions.png`` the same way, so
``glow-repro sample RUN_DIR`` with no options rewrites exactly the grids that training wrote.
``samples_T<t>.png`` draws its own ``n`` samples with the generator reset to ``seed`` for each
temperature, so a grid does not depend on which other temperatures were asked for, and grids
of different temperatures share the same underlying noise (only its scale differs).
A class-conditional run also gets ``classes.png``: one row per class, at temperature 0.7;
``glow-repro sample --class K`` adds ``samples_T<t>_class<K>_<name>.png`` per temperature, each
drawn with the generator reset to ``seed``, so the classes share one noise and only the class
differs between them.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from glow_repro.core.attributes import class_index, listed_classes
from glow_repro.core.config import RunConfig, load_run_config
from glow_repro.core.datasets import label_names
from glow_repro.core.model import Glow
from glow_repro.core.objective import postprocess, preprocess
from glow_repro.errors import UserFacingError
from glow_repro.image_panels import Panel, figure_name, grid_png, in_lines, panel_png
from glow_repro.run.checkpoint import evaluation_weights
from glow_repro.run.engine import build_model, numerics
from glow_repro.run.rundir import RunDir, StudyDir, atomic_write_bytes, atomic_write_json

#: The record of the grids training writes at the end of a run, in its ``samples/`` folder.
SAMPLES_RECORD = "samples.json"
#: The record of what ``glow-repro sample`` wrote.
SAMPLE_RECORD = "sample.json"

#: The temperature of a class-conditional run's per-class grid (the paper's samples use 0.7).
CLASS_TEMPERATURE = 0.7


class RunNotReadyError(UserFacingError):
    """RUN_DIR is not a run directory, has no checkpoint yet, or its checkpoint cannot be used."""


def load_trained_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Glow]:
    """The run's resolved config and its model with the checkpoint's evaluation weights, in
    eval mode on ``device``."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        hint = (
            f"; it looks like a results directory, pass one of its runs: {StudyDir(run.path).runs}/<run id>"
            if StudyDir(run.path).runs.is_dir()
            else ""
        )
        raise RunNotReadyError(f"{run.path}: not a run directory (no config.yaml){hint}")
    config = load_run_config(run.config)
    if not run.checkpoint.is_file():
        run_state = run.state()
        if run_state.finished:
            raise RunNotReadyError(
                f"{run.path}: the run is {run_state} but its checkpoint.pt is gone; restore it from a backup to sample it"
            )
        raise RunNotReadyError(
            f"{run.path}: no checkpoint yet (run state: {run_state}); sample again once training has saved one"
        )
    weights = evaluation_weights(
        run.checkpoint,
        ema=bool(config.train.ema_decay),
        device=device,
        remedy="restore it from a backup, or train the run again to write a new one",
    )
    model = build_model(config, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise RunNotReadyError(
            f"{run.checkpoint}: its weights do not fit the model of {run.config} ({str(err).splitlines()[0]})"
        ) from None
    return config, model.eval()


def class_names(config: RunConfig, model: Glow) -> tuple[str, ...]:
    """The names of a class-conditional model's classes (its indices where the dataset names none)."""
    names = label_names(config.data)
    return names if len(names) == model.n_classes else tuple(map(str, range(model.n_classes)))


def resolve_classes(texts: Sequence[str], config: RunConfig, model: Glow) -> tuple[int, ...]:
    """The class indices ``texts`` name (indices or names, any case), in order, each once."""
    if texts and not model.n_classes:
        raise UserFacingError(
            f"--class: this run is unconditional (model.conditioning: {config.model.conditioning}); "
            "sampling a class needs a run with model.conditioning: class"
        )
    names = class_names(config, model)
    indices = []
    for text in texts:
        index = class_index(text.strip(), names)
        if index is None:
            raise UserFacingError(
                f"--class {text}: {config.data.dataset} has no such class; its classes are {listed_classes(names)}"
            )
        indices.append(index)
    return tuple(dict.fromkeys(indices))


def file_safe(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``_.-`` as one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@torch.no_grad()
def sample_images(model: Glow, temperature: float, n: int, seed: int, y: int | None = None) -> torch.Tensor:
    """``n`` samples at ``temperature`` (Glow, section 5), of class ``y`` for a class-conditional
    model, from a generator reset to ``seed``; the global random state is left as it was."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.sample(n, temperature=temperature, y=y)


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
    alphas = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype).view(1, steps, 1, 1, 1)
    za, _ = model.encode(a)
    zb, _ = model.encode(b)
    lines = [
        torch.lerp(start.unsqueeze(1), end.unsqueeze(1), alphas).flatten(0, 1)
        for start, end in zip(za, zb, strict=True)
    ]
    return model.decode(lines).unflatten(0, (len(a), steps))


def pixels(batch: torch.Tensor, n_bits: int) -> np.ndarray:
    """Model-space images ``[N, C, H, W]`` as the 8-bit pixels ``[N, H, W, C]`` they are saved as."""
    return postprocess(batch.float().cpu(), n_bits).permute(0, 2, 3, 1).numpy()


def write_picture(out: Path, name: str, grid: np.ndarray, columns: int, panel: Panel) -> list[str]:
    """Write the native grid ``name`` of the pixels ``grid`` (``columns`` a line) and, beside it,
    the figure of ``panel`` (docs/images.md); return both file names."""
    atomic_write_bytes(out / name, grid_png(grid, columns))
    atomic_write_bytes(out / figure_name(name), panel_png(panel))
    return [name, figure_name(name)]


def _class_label(label: int, names: tuple[str, ...]) -> str:
    """``3 Dress``, or ``3`` where the class is named by its index."""
    return names[label] if names[label] == str(label) else f"{label} {names[label]}"


def _numbered(n: int) -> list[str]:
    return [str(i + 1) for i in range(n)]


def _name(temperature: float, label: int | None = None, names: tuple[str, ...] = ()) -> str:
    of_class = "" if label is None else f"_class{label}_{file_safe(names[label])}"
    return f"samples_T{temperature:g}{of_class}.png"


def in_run_numerics(write: Callable[..., dict]) -> Callable[..., dict]:
    """Run ``write(model, config, ...)`` in the arithmetic the run trained in (TF32 and cuDNN
    flags from ``config.train``, :func:`glow_repro.run.engine.numerics`), as training draws its
    own samples; like them, without autocast, whatever ``train.precision`` says."""

    @functools.wraps(write)
    def in_numerics(model: Glow, config: RunConfig, *args, **kwargs) -> dict:
        with numerics(config.train):
            return write(model, config, *args, **kwargs)

    return in_numerics


@dataclass
class _Pictures:
    """The pictures of one :func:`write_samples` call: what they share, the files written so far
    and the samples the record's non-finite count covers (the grids' rows and the class squares)."""

    model: Glow
    out: Path
    n: int  # samples per grid, row or square
    seed: int
    n_bits: int
    files: list[str] = field(default_factory=list)
    counted: list[torch.Tensor] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def write(self, name: str, images: np.ndarray, columns: int, panel: Panel) -> None:
        self.files += write_picture(self.out, name, images, columns, panel)

    def square(self, name: str, images: torch.Tensor, title: str) -> None:
        """``images`` in a square-ish grid (``samples_T<t>*.png``), its lines labelled by sample number."""
        grid = pixels(images, self.n_bits)
        lines = in_lines(grid, math.ceil(math.sqrt(len(grid))))
        starts = np.cumsum([0, *map(len, lines)])
        labels = [
            f"{start + 1}-{start + len(line)}" if len(line) > 1 else f"{start + 1}"
            for start, line in zip(starts, lines)
        ]
        self.write(name, grid, len(lines[0]), Panel(lines, title, labels, rows_are="samples"))

    def temperature_squares(self, temperatures: Sequence[float]) -> None:
        """``samples_T<t>.png`` per temperature: ``n`` samples each, from a generator reset to ``seed``."""
        for temperature in temperatures:
            title = f"{self.n} samples at temperature T = {temperature:g}, seed {self.seed}"
            self.square(_name(temperature), sample_images(self.model, temperature, self.n, self.seed), title)

    def temperature_grid(self, grid: Sequence[float]) -> None:
        """``temperatures.png``: a row of ``n`` samples per temperature, drawn one after another
        from the global generator reset to ``seed``."""
        torch.manual_seed(self.seed)
        rows = [self.model.sample(self.n, temperature=t).cpu() for t in grid]
        images = pixels(torch.cat(rows), self.n_bits)
        panel = Panel(in_lines(images, self.n), "Samples at each temperature T (Glow, section 5)",
                      [f"T = {t:g}" for t in grid], _numbered(self.n), columns_are="sample")  # fmt: skip
        self.write("temperatures.png", images, self.n, panel)
        self.counted += rows

    def reconstructions(self, test_images: torch.Tensor) -> float:
        """``reconstructions.png`` of the first ``n`` test images; returns the largest absolute error."""
        # centred in their bins, so reconstruction errors of 1e-7 cannot move a pixel a level
        x = (preprocess(test_images[: self.n], self.n_bits, noise=False) + 0.5 / 2**self.n_bits).to(self.device)
        reconstructed = reconstruct(self.model, x)
        errors = (reconstructed - x).abs().flatten(1).amax(1).tolist()
        images = pixels(torch.cat([x, reconstructed]), self.n_bits)
        panel = Panel(in_lines(images, len(x)), "Test images and their reconstructions decode(encode(x))",
                      ["original", "reconstruction"], [str(i) for i in range(len(x))], columns_are="test image",
                      column_notes=[f"{e:.1g}" for e in errors], notes_are="max abs error")  # fmt: skip
        self.write("reconstructions.png", images, len(x), panel)
        return (reconstructed - x).abs().max().item()

    def class_grid(self, names: tuple[str, ...]) -> None:
        """``classes.png``: a row of ``n`` samples per class at :data:`CLASS_TEMPERATURE`, drawn
        one after another from the global generator reset to ``seed``."""
        torch.manual_seed(self.seed)
        rows = [self.model.sample(self.n, temperature=CLASS_TEMPERATURE, y=label).cpu() for label in range(len(names))]
        images = pixels(torch.cat(rows), self.n_bits)
        panel = Panel(in_lines(images, self.n), f"Samples of each class at temperature T = {CLASS_TEMPERATURE:g}",
                      [_class_label(k, names) for k in range(len(names))], _numbered(self.n), rows_are="class",
                      columns_are="sample")  # fmt: skip
        self.write("classes.png", images, self.n, panel)
        self.counted += rows

    def class_squares(self, grid: Sequence[float], classes: tuple[int, ...], names: tuple[str, ...]) -> list[dict]:
        """``samples_T<t>_class<k>_<name>.png`` per temperature and class, every class from the
        same noise; returns a record row per square."""
        drawn = []
        for temperature in grid if classes else ():
            for label in classes:
                of_class = sample_images(self.model, temperature, self.n, self.seed, y=label)
                title = (f"{self.n} samples of class {_class_label(label, names)} at temperature "
                         f"T = {temperature:g}, seed {self.seed}")  # fmt: skip
                self.square(_name(temperature, label, names), of_class, title)
                drawn.append({"file": self.files[-2], "temperature": temperature, "class": label, "name": names[label]})
                self.counted.append(of_class.cpu())
        return drawn

    def nonfinite(self) -> int:
        """How many of the counted samples hold a NaN or an infinity."""
        return int(sum((~torch.isfinite(r)).flatten(1).any(1).sum() for r in self.counted))

    def interpolation(self, test_images: torch.Tensor, pairs: int, steps: int) -> dict:
        """``interpolation.png``: ``pairs`` pairs of distinct test images, drawn with ``seed``,
        interpolated in ``steps`` steps, a pair a row; returns its record entry."""
        order = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(self.seed))[: 2 * pairs]
        x = preprocess(test_images[order], self.n_bits, noise=False).to(self.device)
        images = pixels(interpolate(self.model, x[0::2], x[1::2], steps).flatten(0, 1), self.n_bits)
        ends = [f"{a} to {b}" for a, b in order.view(pairs, 2).tolist()]
        alphas = [f"{alpha:.2g}" for alpha in torch.linspace(0, 1, steps).tolist()]
        panel = Panel(in_lines(images, steps), "Interpolation between the latents of two test images (Glow, section 6)",
                      ends, alphas, rows_are="test images",
                      columns_are="alpha (0: the first image's reconstruction, 1: the second's)")  # fmt: skip
        self.write("interpolation.png", images, steps, panel)
        return {"pairs": order.view(pairs, 2).tolist(), "steps": steps}


@in_run_numerics
@torch.no_grad()
def write_samples(
    model: Glow,
    config: RunConfig,
    out_dir: str | Path,
    test_images: torch.Tensor,
    *,
    temperatures: tuple[float, ...] | None = None,
    n: int | None = None,
    seed: int | None = None,
    pairs: int = 4,
    steps: int = 8,
    about: dict | None = None,
    record: str = SAMPLE_RECORD,
    classes: tuple[int, ...] = (),
) -> dict:
    """Write sample grids, ``reconstructions.png``, ``interpolation.png`` (unless ``pairs`` is
    0), each beside its labelled figure, and the JSON record named ``record`` under
    ``out_dir``; returns that record.

    ``temperatures`` None means the paper's (``train.sample_temperatures``) as one grid
    ``temperatures.png``, one row per temperature; given, they make that grid and each also
    gets ``samples_T<t>.png`` with ``n`` samples. ``n`` defaults to ``train.n_samples`` and
    ``seed`` to the run's seed; the first ``n`` of ``test_images`` (uint8) are reconstructed.
    A class-conditional model also draws ``classes.png``, ``n`` samples of each class a row,
    and ``samples_T<t>_class<k>_<name>.png`` of ``n`` samples of each class index in ``classes``
    at each temperature (``temperatures``, else the paper's), every class from the same noise.
    ``pairs`` pairs of distinct test images, drawn with ``seed``, are interpolated in ``steps``
    steps, one per row. ``about`` (where the model came from) is stored in the record as it is.
    """
    seed = config.seed if seed is None else seed
    if 2 * pairs > len(test_images):
        raise UserFacingError(
            f"{pairs} interpolation pairs (--interpolations) need {2 * pairs} test "
            f"images; the test split of {config.data.dataset} has {len(test_images)}"
        )
    model.eval()
    pictures = _Pictures(model, Path(out_dir), n or config.train.n_samples, seed, config.data.n_bits)
    grid = list(temperatures or config.train.sample_temperatures)
    pictures.temperature_squares(temperatures or ())
    pictures.temperature_grid(grid)
    reconstruction_error = pictures.reconstructions(test_images)
    names = class_names(config, model) if model.n_classes else ()
    if model.n_classes:
        pictures.class_grid(names)
    drawn = pictures.class_squares(grid, classes, names)
    written = {
        **(about or {}),
        "temperatures": grid,
        "n_samples": pictures.n,
        "reconstruction_max_abs_error": reconstruction_error,
        "nonfinite_samples": pictures.nonfinite(),
        "seed": seed,
        "device": str(pictures.device),
        "weights": "ema" if config.train.ema_decay else "model",
        **({"class_temperature": CLASS_TEMPERATURE} if model.n_classes else {}),
        **({"class_samples": drawn} if drawn else {}),
    }
    if pairs:
        written["interpolation"] = pictures.interpolation(test_images, pairs, steps)
    written["files"] = [*pictures.files, record]
    atomic_write_json(pictures.out / record, written)
    return written
