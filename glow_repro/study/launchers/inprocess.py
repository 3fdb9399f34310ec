"""``--launcher inprocess``: the runs one after another in this process (tests, debugging)."""

from __future__ import annotations

from collections.abc import Sequence

from glow_repro.run.rundir import RunState
from glow_repro.study.launchers.base import Launched, LaunchOptions, register
from glow_repro.study.launchers.execute import execute_run
from glow_repro.study.launchers.progress import Progress
from glow_repro.study.launchers.tasks import RunTask


class InProcess:
    name = "inprocess"
    description = "one run after another in this process (debugging)"

    def check(self) -> None:
        """Runs anywhere."""

    def slots(self, tasks: Sequence[RunTask], options: LaunchOptions) -> int:
        return 1

    def launch(self, tasks: Sequence[RunTask], options: LaunchOptions, progress: Progress) -> Launched:
        launched = Launched()
        try:
            for task in tasks:
                outcome = execute_run(task)
                launched.add(outcome, progress)
                if outcome.state is RunState.INTERRUPTED:
                    launched.interrupted = True
                    break
        except KeyboardInterrupt:
            launched.interrupted = True
        return launched


register(InProcess())
