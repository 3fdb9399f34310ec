"""Pictures of images a person can read, and the same pixels as exact data (docs/images.md).

Every picture of images glow-repro writes (samples, reconstructions and interpolations, Glow
sections 5-6; attribute manipulations, section 5.3) is written twice:

- the native grid ``<name>.png``: the images at their own resolution, one white pixel between
  and around them, nothing else; :func:`read_grid` gives back their exact 8-bit pixels;
- the figure ``<name>.figure.png``: the same pixels upscaled by nearest neighbour, so that the
  smallest image is at least :data:`MIN_SIDE` pixels a side, with a title and its rows and
  columns labelled (temperature, class, alpha, interpolation step). It is a matplotlib figure
  whose labels are also stored in the PNG's ``Description`` text, one per line.

This module is the one home of both layouts: the sample and manipulation writers, TensorBoard and
the report call it. It needs numpy, matplotlib and Pillow, not torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

#: The smallest side, in pixels, an image is upscaled to (by a whole factor) in a figure.
MIN_SIDE = 48
#: The narrowest figure, in pixels.
MIN_WIDTH = 320
#: Figures are laid out in pixels at this resolution and saved at it.
DPI = 100
#: Pixels around the figure and between its images.
MARGIN, GAP = 10, 4
#: Font sizes in points: the title, row labels, column labels and notes.
TITLE_SIZE, LABEL_SIZE, SMALL_SIZE = 11, 10, 8.5
#: The end of a figure's file name; its native grid ends in plain ``.png``.
FIGURE_SUFFIX = ".figure.png"


@dataclass(frozen=True)
class Panel:
    """A figure of images in labelled rows. ``rows``: uint8 arrays ``[k, H, W, C]`` (C 1 or 3),
    one per row, not all of the same length; ``row_labels``: one per row; ``column_labels``
    (above) and ``column_notes`` (below): one per column of the longest row, or none;
    ``rows_are``, ``columns_are`` and ``notes_are``: what the rows, the columns and the notes
    are, e.g. "temperature", written above the row labels, above the column labels and left
    of the notes."""

    rows: Sequence[np.ndarray]
    title: str
    row_labels: Sequence[str]
    column_labels: Sequence[str] = ()
    rows_are: str = ""
    columns_are: str = ""
    column_notes: Sequence[str] = ()
    notes_are: str = ""

    def __post_init__(self) -> None:
        columns = max(len(row) for row in self.rows)
        if len(self.row_labels) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.row_labels)} row labels")
        for name in ("column_labels", "column_notes"):
            if len(getattr(self, name)) not in (0, columns):
                raise ValueError(f"{columns} columns but {len(getattr(self, name))} {name}")


def upscale_factor(height: int, width: int) -> int:
    """The whole factor that brings the smaller side of an image to at least :data:`MIN_SIDE`."""
    return max(1, math.ceil(MIN_SIDE / min(height, width)))


def in_lines(images: np.ndarray, columns: int) -> list[np.ndarray]:
    """``images`` ``[N, ...]`` cut into lines of ``columns`` (the last one may be shorter)."""
    return [images[start : start + columns] for start in range(0, len(images), columns)]


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


class _Layout:
    """Text measured in pixels at :data:`DPI`, and the figure's texts placed by pixel (from
    the top left) once its size is known."""

    def __init__(self, fig: Figure) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig = fig
        self.renderer = FigureCanvasAgg(fig).get_renderer()
        self.texts: list[tuple[float, float, str, dict]] = []

    @staticmethod
    def font(
        size: float, style: Literal["normal", "italic", "oblique"] = "normal", weight: str = "normal"
    ) -> FontProperties:
        from matplotlib.font_manager import FontProperties

        return FontProperties(size=size, style=style, weight=weight)

    def width(self, texts: Sequence[str], font: FontProperties) -> int:
        widths = [self.renderer.get_text_width_height_descent(t, font, ismath=False)[0] for t in texts if t]
        return math.ceil(max(widths, default=0))

    @staticmethod
    def line(font: FontProperties) -> int:
        return math.ceil(font.get_size_in_points() * DPI / 72 * 1.45)

    def put(self, x: float, y: float, text: str, font: FontProperties, ha: str = "center") -> None:
        if text:
            self.texts.append((x, y, text, {"fontproperties": font, "ha": ha}))

    def finish(self, width: int, height: int) -> None:
        self.fig.set_size_inches(width / DPI, height / DPI)
        for x, y, text, style in self.texts:
            self.fig.text(x / width, 1 - y / height, text, va="center", parse_math=False, **style)


def draw_panel(panel: Panel) -> Figure:
    """The figure of ``panel``: its images upscaled by :func:`upscale_factor` (nearest
    neighbour, placed pixel for pixel), the title on top, row labels on the left, column
    labels above and notes below each column."""
    height, width = panel.rows[0].shape[1:3]
    scale = upscale_factor(height, width)
    cell_h, cell_w = height * scale, width * scale
    # matplotlib loads when a picture is drawn, not when a training process starts
    from matplotlib.figure import Figure

    fig = Figure(dpi=DPI, facecolor="white")
    layout = _Layout(fig)
    title = layout.font(TITLE_SIZE, weight="bold")
    label, small = layout.font(LABEL_SIZE), layout.font(SMALL_SIZE)
    header = layout.font(SMALL_SIZE, style="italic")

    columns = max(len(row) for row in panel.rows)
    pitch_x = max(cell_w, layout.width([*panel.column_labels, *panel.column_notes], small) + 6) + GAP
    pitch_y = cell_h + GAP
    grid_w, grid_h = columns * pitch_x - GAP, len(panel.rows) * pitch_y - GAP
    labels_w = max(layout.width(panel.row_labels, label), layout.width([panel.rows_are, panel.notes_are], header))
    labels_w += 8 if labels_w else 0
    needed = MARGIN + labels_w + grid_w + MARGIN
    full_w = max(needed, layout.width([panel.title], title) + 2 * MARGIN, MIN_WIDTH)
    x0 = (full_w - needed) // 2 + MARGIN + labels_w  # the grid's left edge

    y = MARGIN + layout.line(title)
    layout.put(full_w / 2, y - layout.line(title) / 2, panel.title, title)
    if panel.columns_are:
        y += layout.line(header)
        layout.put(x0 + grid_w / 2, y - layout.line(header) / 2, panel.columns_are, header)
    if panel.column_labels:
        y += layout.line(small)
        for c, text in enumerate(panel.column_labels):
            layout.put(x0 + c * pitch_x + (pitch_x - GAP) / 2, y - layout.line(small) / 2, text, small)
    if panel.rows_are:  # on the last header line, above the row labels
        y += 0 if panel.columns_are or panel.column_labels else layout.line(header)
        layout.put(x0 - 8, y - layout.line(header) / 2, panel.rows_are, header, ha="right")
    y0 = math.ceil(y) + 2  # the grid's top edge

    montage = np.full((grid_h, grid_w, 3), 255, np.uint8)
    for r, (row, text) in enumerate(zip(panel.rows, panel.row_labels, strict=True)):
        top = r * pitch_y
        layout.put(x0 - 8, y0 + top + cell_h / 2, text, label, ha="right")
        for c, image in enumerate(row):
            left = c * pitch_x + (pitch_x - GAP - cell_w) // 2
            montage[top : top + cell_h, left : left + cell_w] = _rgb(image).repeat(scale, 0).repeat(scale, 1)
    notes_h = layout.line(small) if panel.column_notes else 0
    notes_y = y0 + grid_h + notes_h / 2 + 2
    layout.put(x0 - 8, notes_y, panel.notes_are, header, ha="right")
    for c, text in enumerate(panel.column_notes):
        layout.put(x0 + c * pitch_x + (pitch_x - GAP) / 2, notes_y, text, small)
    full_h = y0 + grid_h + notes_h + MARGIN
    layout.finish(full_w, full_h)
    fig.figimage(montage, xo=x0, yo=full_h - y0 - grid_h, origin="upper")
    return fig


def figure_texts(fig: Figure) -> list[str]:
    """Every text drawn on ``fig``, top to bottom as placed."""
    return [text.get_text() for text in fig.texts]


def panel_png(panel: Panel) -> bytes:
    """The PNG of :func:`draw_panel`, its texts in the ``Description`` metadata, one per line."""
    fig = draw_panel(panel)
    buffer = io.BytesIO()
    metadata = {"Title": panel.title, "Description": "\n".join(figure_texts(fig))}
    fig.savefig(buffer, format="png", dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def grid_png(images: np.ndarray, columns: int) -> bytes:
    """The native grid: uint8 images ``[N, H, W, C]`` as one RGB PNG, ``columns`` a line, one
    white pixel between and around them (gray images as three equal channels)."""
    n, height, width, _ = images.shape
    columns = min(columns, n)
    lines = in_lines(images, columns)
    grid = np.full((len(lines) * (height + 1) + 1, columns * (width + 1) + 1, 3), 255, np.uint8)
    for r, line in enumerate(lines):
        for c, image in enumerate(line):
            grid[1 + r * (height + 1) :][:height, 1 + c * (width + 1) :][:, :width] = _rgb(image)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def read_grid(png: str | Path, height: int, width: int, channels: int) -> np.ndarray:
    """The exact uint8 pixels ``[cells, H, W, C]`` of a native grid written by :func:`grid_png`,
    line by line (cells past the last image, if any, are white)."""
    with Image.open(png) as image:
        grid = np.asarray(image.convert("RGB"))
    lines, columns = (grid.shape[0] - 1) // (height + 1), (grid.shape[1] - 1) // (width + 1)
    if (lines * (height + 1) + 1, columns * (width + 1) + 1) != grid.shape[:2]:
        raise ValueError(f"{png}: a {grid.shape[1]}x{grid.shape[0]} image is no grid of {width}x{height} images")
    cells = [
        grid[1 + r * (height + 1) :][:height, 1 + c * (width + 1) :][:, :width, :channels]
        for r in range(lines)
        for c in range(columns)
    ]
    return np.stack(cells)


def figure_name(grid: str) -> str:
    """The file name of the figure of the native grid named ``grid`` (``x.png`` -> ``x.figure.png``)."""
    return grid.removesuffix(".png") + FIGURE_SUFFIX


def shown_image(grid: Path) -> Path:
    """The picture to show for a native grid: its figure, or the grid itself when it has none
    (pictures written before figures were)."""
    figure = grid.with_name(figure_name(grid.name))
    return figure if figure.is_file() else grid


def shown_images(folder: Path) -> dict[str, Path]:
    """Each native grid in ``folder`` by its stem -> the picture to show for it (:func:`shown_image`)."""
    grids = sorted(p for p in folder.glob("*.png") if not p.name.endswith(FIGURE_SUFFIX))
    return {grid.stem: shown_image(grid) for grid in grids}
