"""Readable text for swept settings: short key names, value text and variant names (and the
one duration format every command and report uses).

One implementation for every place a run is named: run ids and the variant names of the
plan, the manifest and ``glow-repro status`` (:mod:`glow_repro.study.spec`), and the
``variant`` column and grid order of the results tables and the report
(:mod:`glow_repro.study.tables`); :func:`variant_name` is the one naming rule they share.
Imports neither torch nor pandas.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Numbers in exponent notation that YAML 1.1 (PyYAML) reads as text: ``1e-3``, ``1.0e5``.
_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def format_value(value: Any) -> str:
    """Short text of a config value: ``0.001``, ``true``, ``null``, ``conv1x1``, ``16x32``.

    None and NaN are ``null``; bools (Python, numpy or pandas) ``true``/``false``; floats
    ``:g``; ``"1e-3"`` written in a YAML file reads as text, so it is shown as the number
    ``0.001``; lists and tuples are their items joined by ``x``; anything else ``str()``.
    """
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "null"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return f"{float(value):g}"
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(item) for item in value)
    return str(value)


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Last dotted part of each key (``model.depth`` -> ``depth``), or the full key where two
    keys share that last part."""
    keys = list(keys)
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: tail if last.count(tail) == 1 else key for key, tail in zip(keys, last)}


def table_cell(value: Any) -> Any:
    """A config value as a results-table cell: lists become JSON text (hashable, one parquet
    type), so ``[0.7, 1.0]`` reads the same in a table, a variant name and a report."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def describe(settings: Mapping[str, Any]) -> str:
    """``permutation=conv1x1, coupling=affine`` for ``{"model.permutation": "conv1x1", ...}``,
    in the mapping's order, each value as its table cell reads; ``base`` when there is
    nothing to describe."""
    names = short_names(settings)
    return ", ".join(f"{names[key]}={format_value(table_cell(value))}" for key, value in settings.items()) or "base"


def variant_name(settings: Mapping[str, Any], label: str | None = None) -> str:
    """The name of a variant: its ``label`` (which stands for the settings the study's
    variant entry fixes), then the other swept ``settings`` it is named by; ``base`` when
    there is neither. ``wide``, ``wide, permutation=conv1x1``, ``permutation=conv1x1``."""
    return ", ".join(([label] if label else []) + ([describe(settings)] if settings else [])) or "base"


def duration(seconds: float | None) -> str:
    """Seconds as ``3m05s``, or ``1h02m`` from an hour on; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
