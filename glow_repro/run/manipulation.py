"""Semantic manipulation of attributes (Glow, section 5.3 and its figure of edited faces).

The model is used as trained, with or without labels: every image of a labelled set is encoded,
its latents of all levels concatenated into one vector, and the attribute's direction is the
mean latent of the images that have it minus the mean of those that do not. Moving a test
image's latent along the direction by ``alpha`` and decoding edits the image; ``alpha = 0``
is the image's reconstruction.

An attribute is a CelebA attribute (``Smiling``), or for a class dataset a pair of classes
(``7-vs-1``: positives of class 7, negatives of class 1) or a class against the rest (``7``);
classes are named by index or by name (``Sneaker-vs-Sandal``), parsed by glow_repro.core.attributes.
How well the direction tells the attribute apart is measured on held-out images: the mean
projection of positives and of negatives onto the unit direction, and their gap in pooled
standard deviations.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from glow_repro.core.attributes import parse_attribute
from glow_repro.core.config import RunConfig
from glow_repro.core.data import ImageData
from glow_repro.core.model import Glow
from glow_repro.core.objective import preprocess
from glow_repro.errors import UserFacingError
from glow_repro.image_panels import Panel, in_lines
from glow_repro.run.rundir import atomic_write_json
from glow_repro.run.sampling import file_safe, in_run_numerics, pixels, write_picture

#: The paper's figure moves each image both ways from its reconstruction.
DEFAULT_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def attribute_masks(
    attribute: str, labels: torch.Tensor, names: tuple[str, ...], dataset: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the positive and negative images of ``attribute`` given ``labels``:
    class indices ``[N]`` or binary attributes ``[N, A]`` named by ``names``."""
    parsed = parse_attribute(attribute, names, dataset, per_image_attributes=labels.ndim == 2)
    if parsed.per_image_attributes:
        column = labels[:, parsed.positive]
        return column == 1, column == 0
    is_positive = labels == parsed.positive
    return is_positive, ~is_positive if parsed.negative is None else labels == parsed.negative


def flat_latents(model: Glow, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[N, D]``: every level's latent of each image, concatenated (D = pixels x channels)."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(x), batch_size):
        zs, _ = model.encode(x[start : start + batch_size].to(device))
        rows.append(torch.cat([z.flatten(1) for z in zs], 1))
    return torch.cat(rows)


def latent_direction(latents: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean latent of the positives minus mean latent of the negatives."""
    return latents[positive].mean(0) - latents[negative].mean(0)


def separation(
    latents: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, direction: torch.Tensor
) -> dict[str, float]:
    """Projections onto the unit direction: each group's mean, their gap, and the gap in pooled
    standard deviations (Cohen's d)."""
    projected = latents @ (direction / direction.norm())
    pos, neg = projected[positive].double(), projected[negative].double()
    pooled = math.sqrt(
        ((len(pos) - 1) * pos.var().item() + (len(neg) - 1) * neg.var().item()) / max(len(pos) + len(neg) - 2, 1)
    )
    gap = (pos.mean() - neg.mean()).item()
    return {
        "mean_positive": pos.mean().item(),
        "mean_negative": neg.mean().item(),
        "gap": gap,
        "gap_in_sd": gap / pooled if pooled else math.inf,
        "n_positive": len(pos),
        "n_negative": len(neg),
    }


@torch.no_grad()
def manipulate(model: Glow, x: torch.Tensor, direction: torch.Tensor, alphas: tuple[float, ...]) -> torch.Tensor:
    """``[len(x), len(alphas), C, H, W]``: each image decoded from its latent plus alpha times
    the direction; at alpha 0 exactly ``decode(encode(x))``."""
    zs, _ = model.encode(x)
    sizes = [z[0].numel() for z in zs]
    parts = [part.view(z.shape[1:]) for part, z in zip(direction.split(sizes), zs, strict=True)]
    columns = [model.decode([z + alpha * part for z, part in zip(zs, parts, strict=True)]) for alpha in alphas]
    return torch.stack(columns, 1)


def _model_space(images: torch.Tensor, n_bits: int) -> torch.Tensor:
    """uint8 images -> model space, centred in their bins (as the reconstructions are drawn)."""
    return preprocess(images, n_bits, noise=False) + 0.5 / 2**n_bits


def _masks_with_both(attribute: str, data: ImageData, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    positive, negative = attribute_masks(attribute, data.labels, data.label_names, dataset)
    if not positive.any() or not negative.any():
        raise UserFacingError(
            f"attribute {attribute!r}: {data.name} has {int(positive.sum())} positive and "
            f"{int(negative.sum())} negative images; a direction needs both"
        )
    return positive, negative


@in_run_numerics
@torch.no_grad()
def write_manipulation(
    model: Glow,
    config: RunConfig,
    out_dir: str | Path,
    train: ImageData,
    test: ImageData,
    attribute: str,
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    rows: int = 4,
    encode: int | None = None,
    batch_size: int = 256,
    about: dict | None = None,
) -> dict:
    """The direction of ``attribute`` from the first ``encode`` training images (all by
    default), its separation on as many test images, and ``manipulate_<attribute>.png`` of the
    first ``rows`` test images (one per row, one column per alpha) beside its labelled figure
    (the originals first; docs/images.md), with its JSON record.
    Only the attribute's positives and negatives are encoded. ``about`` (where the model came
    from) is stored in the record as it is."""
    model.eval()
    device = next(model.parameters()).device
    n_bits = config.data.n_bits
    train, test = _limited(train, encode), _limited(test, encode)
    latents, positive, negative = _labelled_latents(model, train, attribute, config, batch_size)
    direction = latent_direction(latents, positive, negative)
    held_out = separation(*_labelled_latents(model, test, attribute, config, batch_size), direction)
    originals = _model_space(test.images[:rows], n_bits).to(device)
    moved = pixels(manipulate(model, originals, direction, alphas).flatten(0, 1), n_bits)
    stem = f"manipulate_{file_safe(attribute)}"
    panel = Panel(
        [
            np.concatenate([original[None], line])
            for original, line in zip(pixels(originals, n_bits), in_lines(moved, len(alphas)))
        ],
        f"{attribute}: test images moved along the attribute's direction (Glow, section 5.3)",
        [str(i) for i in range(len(originals))],
        ["original", *(f"{alpha:g}" for alpha in alphas)],
        rows_are="test image",
        columns_are=_alpha_words(attribute, test, config.data.dataset),
    )
    files = write_picture(Path(out_dir), f"{stem}.png", moved, len(alphas), panel)
    record = {
        **(about or {}),
        "attribute": attribute,
        "alphas": list(alphas),
        "rows": min(rows, len(test.images)),
        "direction_norm": direction.norm().item(),
        "train_images": {"positive": int(positive.sum()), "negative": int(negative.sum())},
        "held_out": held_out,
        "files": [*files, f"{stem}.json"],
    }
    atomic_write_json(Path(out_dir) / f"{stem}.json", record)
    return record


def _alpha_words(attribute: str, data: ImageData, dataset: str) -> str:
    """What the figure's columns are: alpha, and which way it moves an image."""
    parsed = parse_attribute(attribute, data.label_names, dataset, per_image_attributes=data.labels.ndim == 2)
    positive = data.label_names[parsed.positive]
    if parsed.per_image_attributes:
        negative = f"not {positive}"
    else:
        negative = "the other classes" if parsed.negative is None else data.label_names[parsed.negative]
    return f"alpha (0: the reconstruction; above 0 towards {positive}, below 0 towards {negative})"


def _labelled_latents(
    model: Glow, data: ImageData, attribute: str, config: RunConfig, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat latents of the attribute's positive and negative images (the others are not
    encoded) with the two masks over those rows, on the model's device."""
    positive, negative = _masks_with_both(attribute, data, config.data.dataset)
    used = positive | negative
    device = next(model.parameters()).device
    latents = flat_latents(model, _model_space(data.images[used], config.data.n_bits), batch_size)
    return latents, positive[used].to(device), negative[used].to(device)


def _limited(data: ImageData, limit: int | None) -> ImageData:
    return ImageData(data.images[:limit], data.labels[:limit], data.name, data.source, data.label_names)
