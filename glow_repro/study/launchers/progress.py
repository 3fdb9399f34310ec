"""The parent's view of a launch: one progress bar over the runs and a line per finished run.

It only shows: a launcher hands it each outcome as it arrives and returns the outcomes itself
(:class:`glow_repro.study.launchers.base.Launched`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tqdm import tqdm

from glow_repro.run.rundir import RunState
from glow_repro.study.launchers.tasks import Outcome, RunTask


class Progress:
    """A bar of finished runs out of ``tasks``, with how many are done, running and failed."""

    def __init__(self, tasks: Sequence[RunTask], desc: str, slots: int):
        self.tasks = {task.run_id: task for task in tasks}  # each line names the run's variant and seed
        self.states: Counter[RunState] = Counter()
        self.slots = slots
        self.stopped = False
        self.bar = tqdm(total=len(self.tasks), desc=desc, unit="run", dynamic_ncols=True)
        self._refresh()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def show(self, outcome: Outcome) -> None:
        """A run has ended: count it and, unless it never started, print its line."""
        self.states[outcome.state] += 1
        if outcome.state is not RunState.CANCELLED:
            self.write(self._line(outcome))
        self._refresh(redraw=False)
        self.bar.update(1)

    def stopping(self) -> None:
        """The launch is stopping (Ctrl-C): no run counts as running any more."""
        self.stopped = True

    def write(self, text: str) -> None:
        self.bar.write(text)

    def _refresh(self, redraw: bool = True) -> None:
        left = len(self.tasks) - sum(self.states.values())
        self.bar.set_postfix(
            done=sum(count for state, count in self.states.items() if state.finished),
            running=0 if self.stopped else min(self.slots, left),
            failed=self.states[RunState.FAILED],
            refresh=redraw,
        )

    def _line(self, outcome: Outcome) -> str:
        task = self.tasks[outcome.run_id]
        detail = ""
        if outcome.error:
            detail = f": {outcome.error.splitlines()[0][:160]}"
        elif outcome.state is RunState.DIVERGED:  # its last evaluation may be the untrained step 0
            detail = f": diverged at step {outcome.summary.get('first_nonfinite_step') or outcome.summary.get('step')}"
        elif outcome.summary.get("final_test_bpd") is not None:
            detail = f": test bpd {outcome.summary['final_test_bpd']:.3f}"
        elif outcome.state is RunState.ELSEWHERE:
            detail = ": locked by another process"
        return f"{outcome.state:<11} {task.run_id}  ({task.variant}, seed {task.seed}){detail}"
