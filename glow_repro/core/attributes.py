"""Classes and attributes named by the user, checked against a dataset's label names (no torch).

A class is named by its index or its name, case-insensitively (``7``, ``Sneaker``). An
attribute (Glow, section 5.3) is a CelebA attribute (``Smiling``), or for a class dataset a
class against the rest (``7``) or two classes as ``A-vs-B`` (``7-vs-1``). ``glow-repro
sample --class``, ``glow-repro manipulate`` and a study's ``manipulations:`` all read them here,
so a name is accepted or refused the same way everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

from glow_repro.core.config import DataConfig
from glow_repro.core.datasets import label_names
from glow_repro.core.registry import DATASETS
from glow_repro.errors import UserFacingError

VS = "-vs-"


class Attribute(NamedTuple):
    """Which labels make an image positive or negative: a column of binary attributes
    (``negative`` None: the images without it), or a class against another (or the rest: None)."""

    positive: int
    negative: int | None
    per_image_attributes: bool


def class_index(text: str, names: tuple[str, ...]) -> int | None:
    """The index of the class ``text`` names (a name, any case, or an index); None if none."""
    folded = [name.casefold() for name in names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    if text.isdigit() and int(text) < len(names):
        return int(text)
    return None


def listed_classes(names: tuple[str, ...]) -> str:
    """``0 T-shirt/top, 1 Trouser, ...``: the classes as the error messages list them."""
    return ", ".join(f"{index} {name}" for index, name in enumerate(names))


def parse_attribute(attribute: str, names: tuple[str, ...], dataset: str, per_image_attributes: bool) -> Attribute:
    """``attribute`` of a dataset whose labels are named ``names``: binary attributes per
    image (CelebA) when ``per_image_attributes``, else one class per image."""
    if per_image_attributes:
        if attribute not in names:
            raise UserFacingError(f"unknown attribute {attribute!r} of {dataset}: must be one of {', '.join(names)}")
        return Attribute(names.index(attribute), None, True)
    positive, vs, negative = attribute.partition(VS)
    positive_index = class_index(positive, names)
    negative_index = class_index(negative, names) if vs else None
    if positive_index is None or (vs and negative_index is None):
        raise UserFacingError(
            f"unknown attribute {attribute!r} of {dataset}: name a class, a class against the rest, or "
            f"two classes as A{VS}B; its classes are {listed_classes(names)}"
        )
    if positive_index == negative_index:
        raise UserFacingError(
            f"attribute {attribute!r} of {dataset}: both sides are class {positive_index} {names[positive_index]}; "
            f"name two different classes as A{VS}B"
        )
    return Attribute(positive_index, negative_index, False)


def dataset_attribute(attribute: str, data: DataConfig) -> Attribute:
    """``attribute`` checked against the labels of ``data`` (before any image is read)."""
    kind = DATASETS[data.dataset].labels
    if kind is None:
        raise UserFacingError(f"{data.dataset} has no labels, so it has no attributes to manipulate")
    return parse_attribute(attribute, label_names(data), data.dataset, kind == "attributes")
