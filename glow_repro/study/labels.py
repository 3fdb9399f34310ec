"""Readable text for swept settings: short key names and value text (issue #4).

One implementation for every place a run is named: variant labels and run ids
(:mod:`glow_repro.study.spec`), and the ``variant`` column and grid order of the results
tables (:mod:`glow_repro.study.tables`). Imports neither torch nor pandas.
"""

from __future__ import annotations

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


def describe(settings: Mapping[str, Any]) -> str:
    """``permutation=conv1x1, coupling=affine`` for ``{"model.permutation": "conv1x1", ...}``,
    in the mapping's order; ``base`` when there is nothing to describe."""
    names = short_names(settings)
    return ", ".join(f"{names[key]}={format_value(value)}" for key, value in settings.items()) or "base"
