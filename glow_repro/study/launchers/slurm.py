"""``--launcher slurm``: one SLURM array job through submitit, a job per run, and the SLURM
resources it asks for. ``submitit-local`` and ``submitit-debug`` run the same code path through
submitit's local and debug executors (tests, machines without SLURM).

The resources come from the study's ``launcher:`` section (:class:`SlurmResources`), with
``--partition``, ``--time``, ``--gpus`` and ``--processes-per-run`` applied. With
``processes_per_run`` > 1 each job's tasks train their run together with DDP. A job that SLURM
kills leaves its run resumable (status ``running``); Ctrl-C stops waiting, not the jobs.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glow_repro.run.rundir import RunState
from glow_repro.study.launchers.base import Launched, LauncherError, LaunchOptions, register
from glow_repro.study.launchers.execute import execute_run
from glow_repro.study.launchers.progress import Progress
from glow_repro.study.launchers.tasks import Outcome, RunTask

_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_time_minutes(value: int | str) -> int:
    """Minutes from an int or a SLURM time (``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``)."""
    if isinstance(value, int):
        return value
    if str(value).strip().isdigit():
        return int(value)
    match = _SLURM_TIME.match(str(value).strip())
    if not match:
        raise ValueError("must be minutes, or HH:MM:SS / D-HH:MM:SS")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    if match.group(2) is None:  # "MM:SS"
        hours, minutes, seconds = 0, minutes, seconds
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


class SlurmResources(BaseModel):
    """A study's ``launcher:`` section: what each SLURM job asks for; CLI options override these."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    partition: str | None = None
    time: int | str = Field(24 * 60, description="minutes, or HH:MM:SS / D-HH:MM:SS")
    gpus_per_node: int = Field(0, ge=0)
    processes_per_run: int = Field(
        1,
        ge=1,
        description="data-parallel processes per run on one node (one per GPU); "
        "more than 1 trains each run with DistributedDataParallel",
    )
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    array_parallelism: int | None = Field(None, ge=1, description="max array tasks at once")
    additional: dict[str, str] = Field(default_factory=dict, description="extra #SBATCH options")

    @model_validator(mode="after")
    def _one_gpu_per_process(self) -> SlurmResources:
        if self.processes_per_run > 1 and self.gpus_per_node not in (0, self.processes_per_run):
            raise ValueError(
                f"processes_per_run={self.processes_per_run} needs gpus_per_node "
                f"{self.processes_per_run} (one GPU per process) or 0 (CPU), "
                f"got {self.gpus_per_node}"
            )
        return self

    @field_validator("time")
    @classmethod
    def _time(cls, value: int | str) -> int | str:
        if parse_time_minutes(value) < 1:
            raise ValueError("time must be at least one minute")
        return value

    @property
    def timeout_min(self) -> int:
        return parse_time_minutes(self.time)


def execute_job_run(task: RunTask) -> Outcome:
    """A submitit job's entry point. A job of several tasks (``processes_per_run``) is one
    data-parallel run: its tasks join one process group, as torchrun's processes do, before
    :func:`execute_run`. Task 0's outcome is the job's result."""
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return execute_run(task)
    from glow_repro.run.distributed import from_environment, shutdown
    from glow_repro.run.runinfo import resolve_device

    # a task that sees the node's GPUs picks its own by local rank, one shown a single GPU
    # takes it (DistContext.device)
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    group = from_environment(resolve_device(task.config.train.device).type)
    try:
        return execute_run(task, group)
    finally:
        shutdown(group)  # train() leaves the group on its way out; this covers the early returns


@dataclass(frozen=True)
class SubmititArray:
    """An array job through submitit's executor for ``cluster`` (slurm, local or debug)."""

    name: str
    cluster: str
    description: str

    def check(self) -> None:
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise LauncherError(f"--launcher {self.name} needs SLURM (no sbatch on PATH); use --launcher local here")

    def slots(self, tasks: Sequence[RunTask], options: LaunchOptions) -> int:
        return len(tasks)  # every job is queued at once; SLURM decides when each starts

    def launch(self, tasks: Sequence[RunTask], options: LaunchOptions, progress: Progress) -> Launched:
        """Submit one array job and wait for it, showing each job's outcome as it ends."""
        import submitit

        res = SlurmResources.model_validate(options.settings)
        executor = submitit.AutoExecutor(folder=options.folder / "%j", cluster=self.cluster)
        params = {
            "name": options.study,
            "timeout_min": res.timeout_min,
            "gpus_per_node": res.gpus_per_node,
            "tasks_per_node": res.processes_per_run,
            "cpus_per_task": res.cpus_per_task,
            "mem_gb": res.mem_gb,
            "slurm_partition": res.partition,
            "slurm_array_parallelism": res.array_parallelism,
            "slurm_additional_parameters": res.additional or None,
        }
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        threads = res.cpus_per_task
        tasks = [task if task.config.train.threads else dataclasses.replace(task, threads=threads) for task in tasks]
        jobs = executor.map_array(execute_job_run, tasks)
        if jobs:
            progress.write(f"submitted {len(jobs)} jobs (first id {jobs[0].job_id}); logs in {options.folder}")
        pending = dict(zip(jobs, tasks))
        poll = 15.0 if self.cluster == "slurm" else 0.2
        launched = Launched()
        try:
            while pending:
                for job in [job for job in pending if job.done()]:
                    task = pending.pop(job)
                    try:
                        outcome = job.results()[0]  # task 0 speaks for a multi-task job
                    except Exception as err:  # the job itself died: timeout, preemption, node failure
                        outcome = Outcome(task.run_id, RunState.FAILED, error=f"job {job.job_id}: {err}")
                    launched.add(outcome, progress)
                if pending:
                    time.sleep(poll)
        except KeyboardInterrupt:
            launched.interrupted = True
            progress.write(
                f"stopped waiting; {len(pending)} jobs keep running (scancel stops them); "
                "`glow-repro status` shows their progress"
            )
        return launched


register(
    SubmititArray(
        "slurm",
        "slurm",
        "a SLURM array job through submitit, one job per run (resources: the study's launcher: "
        "section, --partition, --time, --gpus, --processes-per-run)",
    )
)
register(
    SubmititArray(
        "submitit-local", "local", "the slurm launcher's code path on this machine (submitit's local executor)"
    )
)
register(
    SubmititArray(
        "submitit-debug", "debug", "the slurm launcher's code path in this process (submitit's debug executor)"
    )
)
