"""Launchers: how a study's runs get trained (docs/architecture.md, "Adding a launcher").

- ``inprocess``: one run after another in this process (tests, debugging).
- ``local``: up to N worker processes at once, one per run, the CPU threads split among them.
- ``slurm``: a submitit array job; ``submitit-local`` / ``submitit-debug`` run the same code
  path through submitit's local and debug executors (tests, machines without SLURM).

Each is a :class:`~glow_repro.study.launchers.base.Launcher` in a module of its own that
registers it in :data:`~glow_repro.study.launchers.base.LAUNCHERS`; importing this package
registers the built-in ones, and the parent shows one progress bar
(:class:`~glow_repro.study.launchers.progress.Progress`) whichever runs.
"""

from glow_repro.study.launchers import inprocess, local, slurm
from glow_repro.study.launchers.base import LAUNCHERS, Launched, Launcher, LauncherError, LaunchOptions, register
from glow_repro.study.launchers.execute import execute_run
from glow_repro.study.launchers.progress import Progress
from glow_repro.study.launchers.tasks import Outcome, RunTask, TrainFn

__all__ = [
    "LAUNCHERS",
    "LaunchOptions",
    "Launched",
    "Launcher",
    "LauncherError",
    "Outcome",
    "Progress",
    "RunTask",
    "TrainFn",
    "execute_run",
    "inprocess",
    "local",
    "register",
    "slurm",
]
