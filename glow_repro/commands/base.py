"""What every command shares: user mistakes become one ``error:`` line and exit status 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from glow_repro.core.config import ConfigError
from glow_repro.errors import UserFacingError


class UserError(click.ClickException):
    """Shown as ``error: <message>`` and exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def describe_os_error(err: OSError) -> str:
    """An OSError as one line: the path, what went wrong, and what to do about it."""
    where = err.filename if err.filename is not None else "a file"
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    reason = err.strerror or str(err) or type(err).__name__
    return (
        f"{where}: {reason}; nothing written before is changed (files are replaced atomically): "
        "fix this (space, permissions, the path) and run the same command again"
    )


#: ``--out``: where a command that reads one run writes its figures (default: the run's samples/).
out_dir_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="output folder [default: RUN_DIR/samples]",
)
#: ``--device``: where a command that loads one run's model runs it.
device_option = click.option(
    "--device",
    type=click.Choice(["cpu", "auto", "cuda"]),
    default="cpu",
    show_default=True,
    help="where the model runs; auto picks CUDA when present",
)


def pictures_written(files: list[str], out: Path) -> str:
    """What a command that draws pictures wrote to ``out``: the labelled figures to open, that
    each has its native-resolution grid beside it, and the record (docs/images.md)."""
    from glow_repro.image_panels import FIGURE_SUFFIX, figure_name

    figures = [name for name in files if name.endswith(FIGURE_SUFFIX)]
    records = [name for name in files if name not in figures and figure_name(name) not in figures]
    return (
        f"wrote {', '.join(figures)} to {out}\n"
        f"  beside each figure its native-resolution grid <name>.png (the exact pixels); record: {', '.join(records)}"
    )


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of text cells under a header, in left-aligned columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing exceptions and the file system's errors (read-only,
    disk full, not a directory) into one-line CLI errors (no traceback); Ctrl-C outside a
    training loop says how to go on instead of a bare ``Aborted!``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, UserFacingError) as err:
            raise UserError(str(err)) from None
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as shell tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as err:
            raise UserError(describe_os_error(err)) from None
        except KeyboardInterrupt:
            click.echo(
                "interrupted; every run keeps its last checkpoint: run the same command again to resume", err=True
            )
            sys.exit(130)

    return wrapper


def warn_about_results(results_dir: Path, left_out: dict[str, str]) -> None:
    """A ``warning:`` line for each thing a reader of RESULTS_DIR's tables must know: a
    ``study.yaml`` that is gone, runs of several specs of the study (``--force-spec``), and each
    run the tables leave out, with why (glow_repro.study.tables.left_out_runs)."""
    from glow_repro.run.rundir import StudyDir, UnreadableFileError
    from glow_repro.study.runner import read_manifest

    if not StudyDir(results_dir).study_file.is_file():
        click.echo(f"warning: {STUDY_GONE.format(results_dir=results_dir)}", err=True)
    try:
        specs = (read_manifest(results_dir) or {}).get("specs", [])
    except UnreadableFileError as err:  # status and run refuse it with the remedy
        specs = []
        click.echo(f"warning: {err}", err=True)
    if len(specs) > 1:
        click.echo(
            f"warning: the runs of {results_dir} come from {len(specs)} different specs of the study "
            "(--force-spec): two variants may differ in more than their swept settings",
            err=True,
        )
    for run_id, why in left_out.items():
        click.echo(f"warning: run {run_id} is left out: {why}", err=True)


#: What a results directory without its ``study.yaml`` cannot tell (the runner writes it).
STUDY_GONE = (
    "{results_dir}/study.yaml is gone, so the study's claims and grid order are unknown here; "
    "`glow-repro run STUDY.yaml --results {results_dir}` writes it again (finished runs are skipped)"
)
