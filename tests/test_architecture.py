"""Imports go one way only, and the analysis never needs torch.

The package's folders show the layers: ``core/`` (the model and what it learns from), ``run/``
(one training run), ``study/``, ``analysis/`` and ``commands/``; at the top sit only the entry
points (``cli``, ``__main__``), ``errors`` and ``image_panels``, which several layers share.
The layers, lowest first; a module may import its own layer and the layers below it::

    base      glow_repro (the package: its version), glow_repro.core and glow_repro.run (the
              packages themselves, empty of imports), errors, image_panels (labelled figures of
              images and their native grids; no torch), run.allocator, run.distributed,
              run.runinfo
    config    core.config, core.registry, core.datasets (names, shapes and readers of the
              datasets; no torch), core.attributes (classes and attributes named by the user,
              checked against those names)
    flows     glow_repro.core.flows.*
    model     core.model, core.objective, glow_repro.core.objectives.*, core.evaluation,
              core.data, core.batches (the training batch of each step)
    rundir    run.rundir (the run- and study-directory format; no torch)
    engine    run.engine, run.checkpoint, run.training_run, run.hooks, run.train, run.cadence,
              run.sampling, run.stability, run.forensics, run.benchmark, run.tensorboard_log,
              run.manipulation
    study     glow_repro.study.*
    analysis  glow_repro.analysis.*
    cli       cli, __main__, glow_repro.commands.*

This is the direction config -> flows -> model -> rundir -> engine/train -> study -> analysis
-> cli, and no module reaches itself through its imports: a circle inside a layer fails
too. Within ``core`` and ``run`` the rank is the module's, not the folder's: ``run.rundir``
sits below the engine because the analysis reads run directories without torch. The small
helpers sit as low as their own imports allow: ``errors``, ``allocator``, ``distributed``,
``runinfo`` and ``image_panels`` import no other layer; ``objective`` and ``data`` are tensor
functions and datasets that training reads, beside the model, and so are the objectives and
the evaluation sums they call. A module that is in no layer fails the test, so a new module
has to be placed here. The registries load their built-in parts (``glow_repro.core.flows``,
``glow_repro.core.datasets``, ``glow_repro.core.objectives``) by name on first lookup: the one
import that points up, and only at run time.
"""

from __future__ import annotations

import ast
import graphlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import glow_repro

LAYERS = [
    (
        "base",
        [
            "glow_repro",
            "glow_repro.core",
            "glow_repro.run",
            "glow_repro.errors",
            "glow_repro.run.allocator",
            "glow_repro.run.distributed",
            "glow_repro.run.runinfo",
            "glow_repro.image_panels",
        ],
    ),
    (
        "config",
        [
            "glow_repro.core.config",
            "glow_repro.core.registry",
            "glow_repro.core.datasets",
            "glow_repro.core.attributes",
        ],
    ),
    ("flows", ["glow_repro.core.flows"]),
    (
        "model",
        [
            "glow_repro.core.model",
            "glow_repro.core.objective",
            "glow_repro.core.objectives",
            "glow_repro.core.evaluation",
            "glow_repro.core.data",
            "glow_repro.core.batches",
        ],
    ),
    ("rundir", ["glow_repro.run.rundir"]),
    (
        "engine",
        [
            "glow_repro.run.engine",
            "glow_repro.run.checkpoint",
            "glow_repro.run.training_run",
            "glow_repro.run.hooks",
            "glow_repro.run.train",
            "glow_repro.run.cadence",
            "glow_repro.run.sampling",
            "glow_repro.run.stability",
            "glow_repro.run.forensics",
            "glow_repro.run.benchmark",
            "glow_repro.run.tensorboard_log",
            "glow_repro.run.manipulation",
        ],
    ),
    ("study", ["glow_repro.study"]),
    ("analysis", ["glow_repro.analysis"]),
    ("cli", ["glow_repro.cli", "glow_repro.__main__", "glow_repro.commands"]),
]
#: Packages whose every module shares the package's layer.
PACKAGES = (
    "glow_repro.core.flows",
    "glow_repro.core.objectives",
    "glow_repro.study",
    "glow_repro.analysis",
    "glow_repro.commands",
)
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER_NAME = [layer for layer, _ in LAYERS]
ROOT = Path(glow_repro.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {"glow_repro": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="glow_repro."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def rank(module: str) -> int | None:
    package = next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)
    return RANK.get(package or module)


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The glow_repro modules that ``module`` imports, wherever the import statement is."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {name for name in names if name == "glow_repro" or name.startswith("glow_repro.")}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(name for name in modules() if rank(name) is None)
    assert not unplaced, f"place these modules in a layer of {__name__}.LAYERS: {unplaced}"


#: What ``glow_repro/`` itself holds: the layers' packages, the entry points and the helpers
#: that several layers share. Any other module belongs in a package.
TOP_LEVEL = {
    "glow_repro",
    "glow_repro.__main__",
    "glow_repro.cli",
    "glow_repro.errors",
    "glow_repro.image_panels",
    "glow_repro.core",
    "glow_repro.run",
    "glow_repro.study",
    "glow_repro.analysis",
    "glow_repro.commands",
}


def test_the_folders_show_the_layers() -> None:
    top = {name for name in modules() if name.count(".") <= 1}
    assert top == TOP_LEVEL, f"move these into a layer's package: {sorted(top - TOP_LEVEL)}"


def test_imports_point_down_the_layers() -> None:
    known = modules()
    upward = []
    for module, path in sorted(known.items()):
        own = rank(module)
        for target in sorted(imported(module, path, known)):
            other = rank(target)
            if own is not None and other is not None and other > own:
                upward.append(f"{module} ({LAYER_NAME[own]}) imports {target} ({LAYER_NAME[other]})")
    assert not upward, "imports against the direction base -> ... -> cli:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The scan above can fail: an import of the study layer from the run-dir layer is found."""
    path = tmp_path / "rundir.py"
    path.write_text("def f():\n    from glow_repro.study import runner\n")
    targets = imported("glow_repro.run.rundir", path, modules())
    assert "glow_repro.study.runner" in targets
    assert rank("glow_repro.study.runner") > rank("glow_repro.run.rundir")


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's glow_repro imports, every import statement counted (lazy ones too)."""
    return {name: imported(name, path, known) & known.keys() - {name} for name, path in known.items()}


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` as the modules along it, or ``[]`` when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def test_no_import_circles() -> None:
    found = circle(import_graph(modules()))
    assert not found, "an import circle: " + " -> ".join(found)


def test_the_check_sees_a_circle_inside_a_layer(tmp_path: Path) -> None:
    """A throwaway import of config from the registry (same layer; config imports the
    registry) closes a circle, and the check names both modules."""
    known = modules()
    path = tmp_path / "registry.py"
    path.write_text(known["glow_repro.core.registry"].read_text() + "\nfrom glow_repro.core import config\n")
    layer = {name for name in known if rank(name) == rank("glow_repro.core.config")}
    assert not circle({name: imports & layer for name, imports in import_graph(known).items() if name in layer})
    graph = import_graph({**known, "glow_repro.core.registry": path})
    found = circle({name: imports & layer for name, imports in graph.items() if name in layer})
    assert {"glow_repro.core.config", "glow_repro.core.registry"} <= set(found)


@pytest.mark.parametrize("layer", ["rundir", "analysis"])
def test_reading_results_never_imports_torch(layer: str) -> None:
    """A report rebuilds without torch: the run-dir layer and every analysis module (with
    what they import, e.g. the study's tables) load without it."""
    names = [name for name in modules() if rank(name) == LAYER_NAME.index(layer)]
    code = f"import sys, {', '.join(names)}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"{layer} imports torch"
