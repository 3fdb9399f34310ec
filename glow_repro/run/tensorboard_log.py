"""Live curves in TensorBoard, for researchers who watch a study while it trains.

With ``train.tensorboard: true`` (or ``--tensorboard``) a run mirrors what it logs into
TensorBoard event files under ``<run dir>/tensorboard/``: the rows of ``metrics.jsonl`` and
``evals.jsonl`` as scalars, stability events as text, and the labelled figures of the final
samples as images (the report's, docs/images.md).
Run ids start with the variant name and the seed, so ``tensorboard --logdir results/<study>``
lists every run by both (docs/for-researchers.md). The JSONL logs stay the record; the mirror
is a view of them: a failure to write is one warning, after which the mirror turns itself off
and the run goes on. TensorBoard is an optional extra (``pip install 'glow-repro[tensorboard]'``).
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from glow_repro.errors import UserFacingError, UserFacingWarning

if TYPE_CHECKING:  # torch is imported when a mirror opens, not with this module
    from torch.utils.tensorboard import SummaryWriter

#: Log name -> {row key: TensorBoard tag}.
SCALARS = {
    "metrics": {"train_bpd": "train/bpd", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "images_per_s": "train/images_per_s"},
    "evals": {"test_bpd": "test/bpd"},
}  # fmt: skip
EVENTS_TAG = "stability/events"
INSTALL = "pip install 'glow-repro[tensorboard]'"


def require_tensorboard(what: str = "train.tensorboard") -> None:
    """Raise a one-line error when the optional TensorBoard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserFacingError(f"{what}: TensorBoard is not installed; install the extra with: {INSTALL}")


def _event_text(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']}: {row.get('kind', 'event')}"]
    for key in ("value", "threshold", "layer", "lr"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4g}" if isinstance(row[key], float) else f"{key} {row[key]}")
    return ", ".join(parts)


def _open_writer(directory: Path) -> SummaryWriter:
    """A writer of event files in ``directory``; an unwritable folder fails here, not later in
    the writer's own thread."""
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory):
        pass
    return SummaryWriter(log_dir=str(directory))


class TensorBoardMirror:
    """Mirrors a run's log rows into TensorBoard event files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        require_tensorboard()
        self.writer: SummaryWriter | None = None
        try:
            self.writer = _open_writer(directory)
        except Exception as err:  # a view of the logs must never stop the run
            self._turn_off("open its event file", err, stacklevel=3)

    def _guard(self, action: str, write: Callable[[SummaryWriter], None]) -> None:
        """``write`` with the open writer, if any; a failure turns the mirror off."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as err:  # a view of the logs must never stop the run
            self._turn_off(action, err, stacklevel=4)

    def _turn_off(self, action: str, err: Exception, stacklevel: int) -> None:
        """One warning naming what failed (at the caller of the public method), then off."""
        warnings.warn(
            f"TensorBoard: could not {action} ({type(err).__name__}: {err}); "
            "the run goes on without TensorBoard logging",
            UserFacingWarning,
            stacklevel=stacklevel,
        )
        self.close()

    def rows(self, log: str, rows: Iterable[dict[str, Any]]) -> None:
        """Mirror the rows just appended to the run's ``log`` (metrics, evals or events)."""

        def write(writer: SummaryWriter) -> None:
            for row in rows:
                if log == "events":
                    writer.add_text(EVENTS_TAG, _event_text(row), row["step"])
                    continue
                for key, tag in SCALARS.get(log, {}).items():
                    value = row.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        writer.add_scalar(tag, value, row["step"])

        self._guard(f"write {log}", write)

    def images(self, pngs: Mapping[str, Path], step: int) -> None:
        """Pictures by name (PNG files: :func:`glow_repro.image_panels.shown_images`) as
        images at ``step``, each tagged ``samples/<name>``."""

        def write(writer: SummaryWriter) -> None:
            for name, png in pngs.items():
                with Image.open(png) as image:
                    pixels = np.asarray(image.convert("RGB"))
                writer.add_image(f"samples/{name}", pixels, step, dataformats="HWC")

        self._guard("write sample images", write)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # closing a broken writer: nothing left to save
                pass
