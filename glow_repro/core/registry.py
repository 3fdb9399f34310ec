"""Names -> parts: the couplings, permutations, scale functions, datasets and objectives a config
may name.

A part is defined once, in its own module, and registers itself there under the name a config
uses (``PERMUTATIONS.register("shuffle", ...)`` beside the ``Shuffle`` layer). Everything else
reads the registry: the config's allowed values and its error messages, the model builder,
the layer tests, the data loader. A registry knows the module that holds its built-in parts
(its ``home``) and imports it on the first lookup, so this module and ``glow_repro.core.config``
import neither torch nor the layers; only validating a model config loads the flow layers.
The datasets' home is torch-free, so reading a data config (as the analysis does) stays so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Part = TypeVar("Part")


def one_of(names: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``: the wording pydantic uses for a choice of literals."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Registry(Generic[Part]):
    """The parts of one kind (``coupling``, ``dataset``...) by name, in registration order."""

    def __init__(self, kind: str, home: str):
        self.kind = kind
        self.home = home
        self.parts: dict[str, Part] = {}

    def register(self, name: str, part: Part) -> Part:
        """Make ``part`` available under ``name``; a name is registered once."""
        if name in self.parts:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self.parts[name] = part
        return part

    def names(self) -> tuple[str, ...]:
        """Every registered name, the built-in parts first."""
        importlib.import_module(self.home)  # the built-in parts register on import
        return tuple(self.parts)

    def __getitem__(self, name: str) -> Part:
        if name not in self.names():
            raise KeyError(f"unknown {self.kind} {name!r}: must be one of {one_of(self.names())}")
        return self.parts[name]

    def validate(self, value: Any) -> Any:
        """A config value check: ``value`` must be a registered name (a pydantic validator)."""
        if value not in self.names():
            raise ValueError(f"must be one of {one_of(self.names())}")
        return value


#: (model config) -> the elementwise map of a coupling layer (glow_repro/core/flows/coupling.py).
COUPLINGS: Registry[Callable[..., Any]] = Registry("coupling", "glow_repro.core.flows")
#: raw network output -> (scale, log scale) of an affine coupling (glow_repro/core/flows/coupling.py).
SCALES: Registry[Callable[..., Any]] = Registry("scale", "glow_repro.core.flows")
#: (channels, model config) -> a channel permutation layer (glow_repro/core/flows/permute.py).
PERMUTATIONS: Registry[Callable[..., Any]] = Registry("permutation", "glow_repro.core.flows")
#: channels -> an invertible 1x1 convolution in one parametrisation (glow_repro/core/flows/permute.py).
CONV1X1_FORMS: Registry[Callable[..., Any]] = Registry("conv1x1 form", "glow_repro.core.flows")
#: name -> :class:`glow_repro.core.datasets.Dataset`: native shape, reader, published name.
DATASETS: Registry[Any] = Registry("dataset", "glow_repro.core.datasets")
#: settings -> the :class:`glow_repro.core.objectives.Objective` a ``model.conditioning`` names.
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective", "glow_repro.core.objectives")
