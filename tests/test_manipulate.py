"""Attribute manipulation (Glow, section 5.3): alpha 0 is the reconstruction, a known shift
between two classes is recovered, attributes are checked, and the command works on
unconditional and class-conditional runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from glow_repro.cli import main
from glow_repro.core.config import ModelConfig, RunConfig
from glow_repro.core.datasets import CELEBA_ATTRIBUTES, DIGIT_NAMES, FASHION_MNIST_NAMES
from glow_repro.core.model import Glow
from glow_repro.errors import UserFacingError
from glow_repro.run.manipulation import (
    attribute_masks,
    flat_latents,
    latent_direction,
    manipulate,
    separation,
)
from glow_repro.run.sampling import reconstruct
from glow_repro.run.train import train
from tests.test_flows import randomise

SHAPE = (1, 8, 8)


def test_alpha_zero_is_exactly_the_reconstruction():
    torch.manual_seed(0)
    model = randomise(Glow(ModelConfig(depth=2, levels=2, width=8), SHAPE), amount=0.1).double()
    x = torch.rand(3, *SHAPE, dtype=torch.float64) - 0.5
    direction = torch.randn(64, dtype=torch.float64)
    grid = manipulate(model, x, direction, (-1.0, 0.0, 0.5))
    assert grid.shape == (3, 3, *SHAPE)
    assert torch.equal(grid[:, 1], reconstruct(model, x))
    assert not torch.allclose(grid[:, 0], grid[:, 1])


def test_a_known_shift_between_two_classes_is_recovered():
    """A new Glow is a linear map A (ActNorms not yet initialised, couplings with zero networks
    scale by sigmoid(2)), so the mean latent difference of two classes that differ by a shift is
    A(shift), and moving along it adds the shift to any image."""
    torch.manual_seed(0)
    model = Glow(ModelConfig(depth=2, levels=2, width=8), SHAPE).double().eval()
    shift = 0.2 * torch.sign(torch.randn(*SHAPE, dtype=torch.float64))
    n = 4000
    x = torch.rand(n, *SHAPE, dtype=torch.float64) * 0.5 - 0.25
    labels = torch.arange(n) % 2
    x[labels == 1] += shift
    positive, negative = attribute_masks("1-vs-0", labels, ("a", "b"), "test")
    latents = flat_latents(model, x, batch_size=1000)
    direction = latent_direction(latents, positive, negative)
    noise = 2 * 0.25 / 3**0.5 / (n / 2) ** 0.5  # sd of a difference of two means of U(-1/4, 1/4)
    torch.testing.assert_close(direction, flat_latents(model, shift[None], 1)[0], rtol=0, atol=5 * noise)
    moved = manipulate(model, x[:5], direction, (0.0, 1.0))
    torch.testing.assert_close(moved[:, 1] - moved[:, 0], shift.expand(5, *SHAPE), rtol=0, atol=5 * noise)
    held = separation(latents, positive, negative, direction)
    assert held["gap"] == pytest.approx(direction.norm().item(), rel=1e-9) and held["gap_in_sd"] > 3


def test_attributes_of_class_and_attribute_datasets():
    labels = torch.tensor([7, 1, 3, 7, 1])
    pos, neg = attribute_masks("7-vs-1", labels, DIGIT_NAMES, "mnist")
    assert pos.tolist() == [True, False, False, True, False] and neg.tolist() == [False, True, False, False, True]
    pos, neg = attribute_masks("7", labels, DIGIT_NAMES, "mnist")
    assert neg.tolist() == [False, True, True, False, True]
    pos, neg = attribute_masks("sneaker-vs-Sandal", labels, FASHION_MNIST_NAMES, "fashion-mnist")
    assert pos.tolist() == [True, False, False, True, False] and not neg.any()
    attributes = torch.zeros(3, 40, dtype=torch.long)
    attributes[1, CELEBA_ATTRIBUTES.index("Smiling")] = 1
    pos, neg = attribute_masks("Smiling", attributes, CELEBA_ATTRIBUTES, "celeba")
    assert pos.tolist() == [False, True, False] and neg.tolist() == [True, False, True]


@pytest.mark.parametrize(
    "attribute, names, dataset, listed",
    [
        ("Smiley", CELEBA_ATTRIBUTES, "celeba", "Blond_Hair, Blurry"),
        ("12", DIGIT_NAMES, "mnist", "0 0, 1 1"),
        ("Boot-vs-Bag", FASHION_MNIST_NAMES, "fashion-mnist", "9 Ankle boot"),
    ],
)
def test_an_unknown_attribute_names_the_ones_that_exist(attribute, names, dataset, listed):
    labels = torch.zeros(2, 40, dtype=torch.long) if dataset == "celeba" else torch.tensor([0, 1])
    with pytest.raises(UserFacingError, match=f"unknown attribute {attribute!r} of {dataset}") as err:
        attribute_masks(attribute, labels, names, dataset)
    assert listed in str(err.value)


@pytest.fixture(scope="module", params=["none", "class"])
def run_dir(request, tmp_path_factory):
    raw = {
        "data": {"dataset": "synthetic", "synthetic_size": 32},
        "model": {"depth": 1, "levels": 2, "width": 8, "conditioning": request.param},
        "train": {
            "steps": 2,
            "batch_size": 8,
            "eval_every": 2,
            "n_samples": 2,
            "init_images": 16,
            "device": "cpu",
            "progress": False,
            "sample_temperatures": [0.5],
        },
    }
    path = tmp_path_factory.mktemp(f"run-{request.param}")
    train(RunConfig.model_validate(raw), path)
    return path


def test_command_writes_the_figure_and_its_record(run_dir, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "manipulate",
            str(run_dir),
            "--attribute",
            "stripes",
            "--alphas",
            "-1,0,1,2",
            "--images",
            "3",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "manipulate_stripes.json").read_text())
    assert record["alphas"] == [-1, 0, 1, 2] and record["direction_norm"] > 0
    assert record["held_out"]["n_positive"] + record["held_out"]["n_negative"] == 32
    grid = np.asarray(Image.open(tmp_path / "manipulate_stripes.png"))
    assert grid.shape[:2] == (3 * 9 + 1, 4 * 9 + 1)  # rows: images; columns: alphas (8 px + padding)
    assert "held-out projection" in result.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--attribute", "zigzag"], "unknown attribute 'zigzag' of synthetic"),
        (["--attribute", "blob", "--alphas", "1,x"], "--alphas: expected finite numbers"),
        (["--attribute", "blob", "--alphas", "inf,nan"], "--alphas: expected finite numbers"),
        (["--attribute", "blob", "--alphas", "-1,1e999"], "--alphas: expected finite numbers"),
        (["--attribute", "stripes-vs-1"], "both sides are class 1 stripes; name two different classes"),
    ],
)
def test_command_mistakes_are_one_line(run_dir, tmp_path, args, expected):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["manipulate", str(run_dir), "--out", str(out), *args])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert "0 blob, 1 stripes" in result.output or "alphas" in expected or "both sides" in expected
    assert not out.exists()
