"""``glow-repro sample --class``: samples of chosen classes of a class-conditional run (the
official code's ``--ycond``), named by index or name, with one-line errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from glow_repro.cli import main
from glow_repro.core.datasets import FASHION_MNIST_NAMES
from glow_repro.core.model import Glow
from glow_repro.errors import UserFacingError
from glow_repro.image_panels import grid_png
from glow_repro.run.sampling import pixels, resolve_classes, sample_images, write_samples
from glow_repro.run.train import train
from tests.conftest import tiny_config
from tests.test_flows import randomise

TINY = {"data": {"synthetic_size": 32}, "model": {"depth": 1, "width": 8}}
RUN = {"train": {"steps": 2, "batch_size": 8, "eval_every": 2, "n_samples": 2, "init_images": 16}}


def conditional_model() -> tuple:
    """A tiny class-conditional model of the synthetic dataset (blob, stripes), its priors'
    class shifts moved away from zero, in float64."""
    config = tiny_config(TINY, {"model": {"conditioning": "class"}})
    torch.manual_seed(0)
    return config, randomise(Glow(config.model, config.data.shape, n_classes=2), amount=0.2).double()


def test_class_samples_are_draws_of_that_class(tmp_path):
    config, model = conditional_model()
    test_images = torch.zeros(4, *config.data.shape, dtype=torch.uint8)
    record = write_samples(model, config, tmp_path, test_images, temperatures=(0.0, 0.5), n=3, pairs=0, classes=(1, 0))
    expected = [f"samples_T{t:g}_class{k}_{name}.png" for t in (0, 0.5) for k, name in ((1, "stripes"), (0, "blob"))]
    assert [row["file"] for row in record["class_samples"]] == expected
    assert set(expected) <= set(record["files"]) and json.loads((tmp_path / "sample.json").read_text()) == record
    for row in record["class_samples"]:
        drawn = sample_images(model, row["temperature"], 3, config.seed, y=row["class"])
        assert (tmp_path / row["file"]).read_bytes() == grid_png(pixels(drawn, config.data.n_bits), 2)
    # a draw of class k is mean_k + T * exp(logs_k) * eps: at T 0 the class's top prior mean, and
    # at T > 0 with the same eps for every class (one noise, only the class differs)
    noise = []
    for k in (0, 1):
        mean, logs = model.top_prior.params(3, y=torch.full((3,), k))
        top = model.encode(sample_images(model, 0.0, 3, config.seed, y=k))[0][-1]
        torch.testing.assert_close(top, mean, rtol=1e-9, atol=1e-9)
        top = model.encode(sample_images(model, 0.5, 3, config.seed, y=k))[0][-1]
        noise.append((top - mean) / (0.5 * logs.exp()))
    torch.testing.assert_close(noise[0], noise[1], rtol=1e-7, atol=1e-7)
    assert not torch.allclose(
        model.top_prior.params(1, y=torch.tensor([0]))[0], model.top_prior.params(1, y=torch.tensor([1]))[0]
    )
    assert (tmp_path / expected[2]).read_bytes() != (tmp_path / expected[3]).read_bytes()


def test_classes_are_named_by_index_or_name_in_any_case():
    config = tiny_config({"data": {"dataset": "fashion-mnist"}, "model": {"conditioning": "class", "width": 4}})
    model = Glow(config.model, config.data.shape, n_classes=10)
    assert resolve_classes(("sneaker", "9", "Sneaker", " Trouser "), config, model) == (7, 9, 1)
    with pytest.raises(UserFacingError) as err:
        resolve_classes(("Boot",), config, model)
    message = str(err.value)
    assert message.startswith("--class Boot: fashion-mnist has no such class") and "\n" not in message
    assert ", ".join(f"{i} {n}" for i, n in enumerate(FASHION_MNIST_NAMES)) in message


def test_an_unconditional_model_takes_no_class():
    config = tiny_config(TINY)
    with pytest.raises(UserFacingError, match="--class: this run is unconditional"):
        resolve_classes(("0",), config, Glow(config.model, config.data.shape))
    assert resolve_classes((), config, Glow(config.model, config.data.shape)) == ()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for conditioning in ("none", "class"):
        train(tiny_config(TINY, RUN, {"model": {"conditioning": conditioning}}), root / conditioning, threads=1)
    return root


def cli(*args):
    return CliRunner().invoke(main, ["sample", *map(str, args)])


def test_command_writes_the_class_grids_beside_the_others(runs, tmp_path):
    result = cli(runs / "class", "--class", "stripes", "--class", "0", "-t", "0.5", "-t", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("samples_T0.5", "samples_T1", *(f"samples_T{t}_class{k}" for t in ("0.5", "1") for k in "01")):
        assert list(tmp_path.glob(f"{name}*.png")), name
    assert (tmp_path / "samples_T1_class1_stripes.png").is_file() and (tmp_path / "classes.png").is_file()
    record = json.loads((tmp_path / "sample.json").read_text())
    assert [(row["class"], row["name"]) for row in record["class_samples"]] == [(1, "stripes"), (0, "blob")] * 2


@pytest.mark.parametrize(
    "run, value, expected",
    [
        ("class", "2", "--class 2: synthetic has no such class; its classes are 0 blob, 1 stripes"),
        ("class", "Sneaker", "--class Sneaker: synthetic has no such class; its classes are 0 blob, 1 stripes"),
        ("none", "0", "--class: this run is unconditional (model.conditioning: none)"),
    ],
)
def test_command_class_mistakes_are_one_line(runs, tmp_path, run, value, expected):
    result = cli(runs / run, "--class", value, "--out", tmp_path)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {expected}")
    assert not list(tmp_path.iterdir())
