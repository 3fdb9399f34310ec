"""Pictures a person can read (docs/images.md): every figure the sample and manipulation writers
make is at least 256 pixels wide, shows each image nearest-neighbour upscaled to at least 48
pixels a side and carries its labels; the native grids beside them give back the exact pixels.
Checked for digits (8x8, 1 channel), Fashion-MNIST's shape (28x28, 1 channel) and 3-channel
synthetic images (32x32 and 64x64), on small class-conditional models that are not trained."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from glow_repro.core.data import ImageData
from glow_repro.core.datasets import label_names
from glow_repro.core.model import Glow
from glow_repro.image_panels import (
    FIGURE_SUFFIX,
    MIN_SIDE,
    Panel,
    draw_panel,
    figure_texts,
    grid_png,
    panel_png,
    read_grid,
    shown_images,
)
from glow_repro.run.manipulation import write_manipulation
from glow_repro.run.sampling import file_safe, pixels, sample_images, write_samples
from tests.conftest import tiny_config
from tests.test_flows import randomise

SHAPES = {
    "digits": {"dataset": "digits"},
    "fashion-mnist": {"dataset": "fashion-mnist"},
    "synthetic-32x32x3": {"dataset": "synthetic", "image_size": 32, "channels": 3},
    "synthetic-64x64x3": {"dataset": "synthetic", "image_size": 64, "channels": 3},
}
N, PAIRS, STEPS, ALPHAS = 3, 2, 4, (-1.0, 0.0, 1.5)


def upscaled_at(picture: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``image`` (``[H, W, C]``) appears in ``picture`` (RGB) upscaled by a whole factor
    to at least :data:`MIN_SIDE` a side, pixel for pixel."""
    scale = math.ceil(MIN_SIDE / min(image.shape[:2]))
    block = np.broadcast_to(image, (*image.shape[:2], 3)).repeat(scale, 0).repeat(scale, 1)
    height, width = block.shape[:2]
    for y, x in zip(*np.nonzero((picture[: 1 - height or None, : 1 - width or None] == block[0, 0]).all(-1))):
        if np.array_equal(picture[y : y + height, x : x + width], block):
            return True
    return False


def labels_of(png) -> list[str]:
    with Image.open(png) as image:
        return image.text["Description"].splitlines()


@pytest.fixture(scope="module", params=list(SHAPES))
def written(request, tmp_path_factory):
    """A class-conditional model of the shape, its sample pictures and a manipulation figure."""
    config = tiny_config({"data": SHAPES[request.param], "model": {"depth": 1, "levels": 2, "width": 4,
                                                                   "conditioning": "class"}})  # fmt: skip
    names = label_names(config.data)
    torch.manual_seed(0)
    model = randomise(Glow(config.model, config.data.shape, n_classes=len(names)), amount=0.05)
    images = torch.randint(0, 256, (8, *config.data.shape), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    out = tmp_path_factory.mktemp(request.param)
    record = write_samples(
        model, config, out, images, temperatures=(0.0, 0.7), n=N, pairs=PAIRS, steps=STEPS, classes=(1,)
    )
    data = ImageData(images, torch.arange(8) % 2, config.data.dataset, "test", names)
    attribute = f"{names[1]}-vs-{names[0]}"
    manipulated = write_manipulation(model, config, out, data, data, attribute, alphas=ALPHAS, rows=2)
    return config, model, images, out, record, manipulated


def test_every_figure_is_wide_upscaled_and_stands_beside_its_native_grid(written):
    config, _, _, out, record, manipulated = written
    figures = sorted(out.glob(f"*{FIGURE_SUFFIX}"))
    assert {p.name for p in figures} == {
        name for name in record["files"] + manipulated["files"] if FIGURE_SUFFIX in name
    }
    # samples at 2 temperatures, temperatures, reconstructions, classes, class 1 at 2
    # temperatures, interpolation and the manipulation
    assert len(figures) == 9
    channels, height, width = config.data.shape
    for figure in figures:
        grid = out / figure.name.replace(FIGURE_SUFFIX, ".png")
        assert shown_images(out)[grid.stem] == figure
        with Image.open(figure) as image:
            assert image.width >= 256, figure.name
            picture = np.asarray(image.convert("RGB"))
        first = read_grid(grid, height, width, channels)[0]
        assert upscaled_at(picture, first), f"{figure.name}: its first image is not there, upscaled"


def test_figures_carry_their_labels(written):
    config, _, _, out, record, manipulated = written
    names = label_names(config.data)
    classes = [name if name == str(k) else f"{k} {name}" for k, name in enumerate(names)]  # digits: "3", not "3 3"
    pairs = record["interpolation"]["pairs"]
    expected = {
        "temperatures": ["T = 0", "T = 0.7", "sample", *map(str, range(1, N + 1))],
        "reconstructions": ["original", "reconstruction", "test image", "max abs error"],
        "classes": [*classes, "class", "sample"],
        "samples_T0.7": ["3 samples at temperature T = 0.7, seed 0", "samples", "1-2", "3"],
        f"samples_T0.7_class1_{record['class_samples'][0]['name']}": [
            f"3 samples of class {classes[1]} at temperature T = 0.7, seed 0"
        ],
        "interpolation": [f"{a} to {b}" for a, b in pairs] + ["0", "0.33", "0.67", "1", "test images"],
        f"manipulate_{names[1]}-vs-{names[0]}": ["original", "-1", "0", "1.5", "test image", "0", "1"],
    }
    for stem, labels in expected.items():
        drawn = labels_of(out / f"{file_safe(stem)}{FIGURE_SUFFIX}")
        assert set(labels) <= set(drawn), (stem, drawn)
    title, *manipulation = labels_of(out / f"manipulate_{file_safe(manipulated['attribute'])}{FIGURE_SUFFIX}")
    assert title.startswith(f"{manipulated['attribute']}: test images moved along the attribute's direction")
    assert f"alpha (0: the reconstruction; above 0 towards {names[1]}, below 0 towards {names[0]})" in manipulation
    assert f"{record['reconstruction_max_abs_error']:.1g}" in labels_of(out / f"reconstructions{FIGURE_SUFFIX}")


def test_native_grids_give_back_the_exact_pixels(written):
    config, model, images, out, record, _ = written
    channels, height, width = config.data.shape
    n_bits = config.data.n_bits
    for temperature in (0.0, 0.7):
        drawn = pixels(sample_images(model, temperature, N, seed=record["seed"]), n_bits)
        cells = read_grid(out / f"samples_T{temperature:g}.png", height, width, channels)
        assert np.array_equal(cells[:N], drawn) and (cells[N:] == 255).all()  # 3 in a 2x2 grid
    # the first row of the reconstructions is the test images, each 8-bit value centred in its bin
    originals = read_grid(out / "reconstructions.png", height, width, channels)[:N]
    assert originals.dtype == np.uint8 and np.array_equal(originals, images[:N].permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3), (5, 9, 3)])
def test_a_panel_is_drawn_pixel_for_pixel_with_every_label(shape):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, (k, *shape), dtype=np.uint8) for k in (3, 2)]
    panel = Panel(rows, "a title", ["row one", "row two"], ["c1", "c2", "c3"], "rows", "columns", ["n1", "n2", "n3"],
                  "notes")  # fmt: skip
    fig = draw_panel(panel)
    assert set(figure_texts(fig)) == {"a title", "row one", "row two", "c1", "c2", "c3", "rows", "columns", "n1",
                                      "n2", "n3", "notes"}  # fmt: skip
    png = panel_png(panel)
    with Image.open(io.BytesIO(png)) as image:
        assert image.width >= 256 and image.text["Title"] == "a title"
        assert image.text["Description"].splitlines() == figure_texts(fig)
        picture = np.asarray(image.convert("RGB"))
    assert all(upscaled_at(picture, image) for row in rows for image in row)


def test_grids_round_trip_and_refuse_what_is_not_one(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 7, 6, 3), dtype=np.uint8)
    (tmp_path / "grid.png").write_bytes(grid_png(images, 2))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (2 * 7 + 1, 3 * 8 + 1)
    assert np.array_equal(read_grid(tmp_path / "grid.png", 7, 6, 3)[:5], images)
    with pytest.raises(ValueError, match="no grid of 7x7 images"):
        read_grid(tmp_path / "grid.png", 7, 7, 3)


def test_a_panel_refuses_labels_that_do_not_fit():
    rows = [np.zeros((2, 4, 4, 1), np.uint8)]
    with pytest.raises(ValueError, match="1 rows but 2 row labels"):
        Panel(rows, "t", ["a", "b"])
    with pytest.raises(ValueError, match="2 columns but 3 column_labels"):
        Panel(rows, "t", ["a"], ["1", "2", "3"])
