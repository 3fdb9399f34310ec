"""The launcher protocol and the registry of launchers (docs/architecture.md, "Adding a launcher").

A launcher is shaped like submitit's ``Executor``: it has a name, says whether it can run on
this machine (:meth:`Launcher.check`), how many runs it trains at once (:meth:`Launcher.slots`)
and trains a list of runs, returning their outcomes (:meth:`Launcher.launch`). Each run goes
through :func:`glow_repro.study.launchers.execute.execute_run`, which takes its lock and turns
whatever happens into an :class:`Outcome`. ``--launcher NAME`` picks one from
:data:`LAUNCHERS`, which also gives the command line its choices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from glow_repro.core.registry import Registry, one_of
from glow_repro.errors import UserFacingError
from glow_repro.study.launchers.progress import Progress
from glow_repro.study.launchers.tasks import Outcome, RunTask


class LauncherError(UserFacingError):
    """A launcher cannot run here (e.g. no SLURM on this machine), or there is none by that name."""


@dataclass(frozen=True)
class LaunchOptions:
    """What a launch may use besides its runs."""

    study: str  # the study's name (a SLURM job's name)
    folder: Path  # where a launcher keeps files of its own: the study's StudyDir.submitit
    workers: int = 1  # runs at once, for a launcher that leaves the number to the user (local)
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The study's ``launcher:`` section with the command line's options applied, validated
    (the submitit launchers read it as their ``SlurmResources``)."""


@dataclass
class Launched:
    """What a launch returns: the outcome of each run it got to, and whether a signal (Ctrl-C,
    SIGTERM) or a run's own interruption ended it early."""

    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def add(self, outcome: Outcome, progress: Progress) -> None:
        """Keep a run's outcome and show it."""
        self.outcomes.append(outcome)
        progress.show(outcome)


class Launcher(Protocol):
    """How a study's runs get trained."""

    @property
    def name(self) -> str:
        """Its ``--launcher`` name."""

    @property
    def description(self) -> str:
        """One line for ``glow-repro run --help``."""

    def check(self) -> None:
        """Raise :class:`LauncherError` when it cannot run on this machine."""

    def slots(self, tasks: Sequence[RunTask], options: LaunchOptions) -> int:
        """How many of ``tasks`` train at once (the progress bar's ``running``)."""

    def launch(self, tasks: Sequence[RunTask], options: LaunchOptions, progress: Progress) -> Launched:
        """Train ``tasks``, hand ``progress`` each outcome as it arrives, and return them all.
        One failing run never stops the others; Ctrl-C ends the launch ``interrupted``."""


#: Every launcher by name, the built-in ones (``glow_repro.study.launchers``) first.
LAUNCHERS: Registry[Launcher] = Registry("launcher", "glow_repro.study.launchers")


def register(launcher: Launcher) -> Launcher:
    """Make ``launcher`` a choice of ``--launcher`` under its name."""
    return LAUNCHERS.register(launcher.name, launcher)


def checked_launcher(name: str) -> Launcher:
    """The launcher called ``name``, once it has said it can run here; else a one-line error."""
    if name not in LAUNCHERS.names():
        raise LauncherError(f"launcher {name!r}: must be one of {one_of(LAUNCHERS.names())}")
    launcher = LAUNCHERS[name]
    launcher.check()
    return launcher
