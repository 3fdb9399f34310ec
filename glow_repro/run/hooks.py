"""The training loop's hooks: each of its concerns in one small class (docs/architecture.md,
"Adding a hook").

The loop (:func:`glow_repro.run.train.run_steps`) enters every hook, a context manager, before
its first step and leaves them all after its last, or when an interrupt or an error ends it.
After each step it calls :meth:`Hook.after_step` of every hook in the order of
:func:`standard_hooks`: the TensorBoard mirror (when asked for), the stability monitor, the
metrics log, the recovery from a bad step, the evaluation cadence, the progress bar, the
checkpoint cadence and the signals. Once the run has ended and its samples are written, rank 0
calls :meth:`Hook.finished`. A bad step (its update not kept) is logged and recovered from;
the hooks after recovery leave it alone.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from tqdm import tqdm

from glow_repro.image_panels import shown_images
from glow_repro.run.cadence import eval_due
from glow_repro.run.forensics import locate_nonfinite, save_capsule
from glow_repro.run.rundir import JsonlLog, RunState
from glow_repro.run.tensorboard_log import TensorBoardMirror
from glow_repro.run.training_run import StepOutcome, TrainingRun


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; the run saved a checkpoint at a step boundary."""


class Hook:
    """One concern of the training loop; every method does nothing unless overridden."""

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        """After each step (every rank)."""

    def finished(self, training: TrainingRun) -> None:
        """After the run ended, its samples written (rank 0)."""


class MonitorHook(Hook):
    """Spikes and, when due, the layers' health signals of a good step, as events."""

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        if outcome.fault is None:
            row = outcome.row
            events = training.monitor.observe(training.step, row["train_bpd"], row["grad_norm"], row["lr"])
            training.write(training.run_dir.events, events)


class LoggingHook(Hook):
    """A metrics row every ``train.log_every`` steps, and for every bad step."""

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        if training.step % training.config.train.log_every == 0 or outcome.fault:
            timing = {
                "step_time": outcome.seconds,
                "wall_time": training.elapsed,
                "images_per_s": training.batch_order.batch_size / outcome.seconds,
            }
            training.write(training.run_dir.metrics, [{**outcome.row, **timing}])


class RecoveryHook(Hook):
    """A bad step (non-finite, or bpd above ``monitor.max_bpd``) is recorded with the layer it
    started in and a capsule of its batch, then ``train.on_nonfinite`` applies; a run that
    diverged ends."""

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        if outcome.fault is None:
            return
        config, step, lr, kind = training.config, training.step, outcome.row["lr"], outcome.fault
        model, batch = training.engine.model, outcome.batch
        settings = training.objective.settings
        finding = locate_nonfinite(
            model, batch.x, settings.n_bits, settings.precision, labels=batch.y, class_weight=settings.class_weight
        )
        if training.recovery.first_nonfinite is None and training.dist.is_main:
            where = training.run_dir.capsules / f"step_{step:07d}.pt"
            save_capsule(
                where, config=config, model=model, batch=batch.x, step=step, lr=lr, finding=finding, labels=batch.y
            )
        response = training.recovery.respond(kind, step)
        value = outcome.row["grad_norm"] if kind == "nonfinite_gradient" else outcome.row["train_bpd"]
        monitor = training.monitor
        events = [{**monitor.event(step, kind, value, layer=finding.layer, lr=lr), "phase": finding.phase}]
        if response.action == "rollback" and not response.gave_up:
            training.load_checkpoint(rollback=True)
            events.append(monitor.event(step, "rollback", training.step, lr=lr * config.train.rollback_lr_factor))
        if response.gave_up:
            recovered = training.recovery.skipped + training.recovery.rollbacks
            events.append(monitor.event(step, "gave_up", recovered, lr=lr))
        training.write(training.run_dir.events, events)
        if response.diverged:
            training.ended = RunState.DIVERGED


class EvaluationHook(Hook):
    """Test metrics at the cadence of ``train.eval_every`` or ``train.eval_every_epochs``, and
    after the last step."""

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        step = training.step
        due = eval_due(step, training.config.train, training.batch_order.per_epoch) or step == training.total_steps
        if outcome.fault is None and due:
            training.evaluate()


class ProgressHook(Hook):
    """A tqdm bar of the steps on rank 0, when ``show`` (and stderr is a terminal)."""

    def __init__(self, training: TrainingRun, show: bool):
        self.training, self.show = training, show

    def __enter__(self) -> ProgressHook:
        self.bar = tqdm(
            total=self.training.total_steps,
            initial=self.training.step,
            disable=not self.show,
            desc=self.training.run_dir.path.name,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        if outcome.fault:  # a rollback goes back
            self.bar.n = training.step
            return
        self.bar.update(training.step - self.bar.n)
        rate = training.batch_order.batch_size / outcome.seconds
        self.bar.set_postfix(bpd=f"{outcome.row['train_bpd']:.3f}", img_s=f"{rate:.0f}")


class CheckpointHook(Hook):
    """A checkpoint every ``train.checkpoint_every`` steps, after the last step and, with
    ``train.checkpoint_every_minutes``, once that much wall time passed."""

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        step = training.step
        due = step % training.config.train.checkpoint_every == 0 or step == training.total_steps
        if outcome.fault is None and (due or training.checkpoint_timer.due()):
            training.save_checkpoint()
            if training.dist.is_main:
                training.run_dir.write_status(RunState.RUNNING, step=step)


class SignalHook(Hook):
    """SIGINT/SIGTERM become a flag checked at step boundaries: on any rank's, every rank
    saves a checkpoint and raises :class:`RunInterrupted`."""

    def __enter__(self) -> SignalHook:
        self.stop = False

        def handler(signum: int, frame: Any) -> None:
            self.stop = True

        self.previous: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def after_step(self, training: TrainingRun, outcome: StepOutcome) -> None:
        if outcome.fault is None and training.dist.any(self.stop, training.device):
            training.save_checkpoint()
            if training.dist.is_main:
                training.run_dir.write_status(RunState.INTERRUPTED, step=training.step)
            raise RunInterrupted(f"{training.run_dir.path}: interrupted at step {training.step}")


class TensorBoardHook(Hook):
    """Mirrors every row the run logs into TensorBoard from its construction on, and the final
    sample grids; closed when the run ends, is interrupted or fails."""

    def __init__(self, training: TrainingRun):
        self.mirror = TensorBoardMirror(training.run_dir.tensorboard)
        training.listeners.append(self.rows)

    def rows(self, log: JsonlLog, rows: list[dict]) -> None:
        self.mirror.rows(log.path.stem, rows)

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.mirror.close()

    def finished(self, training: TrainingRun) -> None:
        self.mirror.images(shown_images(training.run_dir.samples), training.step)
        self.mirror.close()


def standard_hooks(training: TrainingRun, progress: bool | None) -> list[Hook]:
    """The hooks of a run, in the order they act after a step: the TensorBoard mirror on rank
    0 when ``train.tensorboard`` asks for it (built first, so it sees the rows of the run's
    start too), and a progress bar when ``progress`` (default ``train.progress``) and
    stderr is a terminal."""
    cfg, main = training.config.train, training.dist.is_main
    show = (cfg.progress if progress is None else progress) and sys.stderr.isatty() and main
    mirror = [TensorBoardHook(training)] if cfg.tensorboard and main else []
    return [
        *mirror,
        MonitorHook(),
        LoggingHook(),
        RecoveryHook(),
        EvaluationHook(),
        ProgressHook(training, show),
        CheckpointHook(),
        SignalHook(),
    ]
