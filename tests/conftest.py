"""What several test files share: the tiny run config that trains in seconds on synthetic images.

Each file states only what its runs change (``tiny_config({"train": {"steps": 5}})``), so the
common part is written once here.
"""

from __future__ import annotations

import copy
from typing import Any

from glow_repro.core.config import RunConfig

#: Glow with two levels of two flow steps and width 16 on the synthetic dataset, quietly.
TINY: dict[str, dict[str, Any]] = {
    "data": {"dataset": "synthetic"},
    "model": {"depth": 2, "levels": 2, "width": 16},
    "train": {"progress": False},
}


def tiny_raw(*changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """:data:`TINY` with each mapping of ``changes`` (section -> keys) applied in order."""
    raw = copy.deepcopy(TINY)
    for change in changes:
        for section, values in change.items():
            raw.setdefault(section, {}).update(values)
    return raw


def tiny_config(*changes: dict[str, dict[str, Any]], seed: int = 0) -> RunConfig:
    """The validated run config of :func:`tiny_raw` with ``seed``."""
    return RunConfig.model_validate({**tiny_raw(*changes), "seed": seed})
