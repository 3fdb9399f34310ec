"""``glow-repro sample``: checkpoint loading (EMA included), latent interpolation
(Glow section 6), reproducible sample grids and one-line errors, on tiny runs trained here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from glow_repro.cli import main
from glow_repro.core.data import load_split
from glow_repro.core.objective import preprocess
from glow_repro.run.sampling import (
    interpolate,
    load_trained_model,
    reconstruct,
    sample_images,
)
from glow_repro.run.train import train
from tests.conftest import tiny_config
from tests.test_model import TINY, tiny_glow

RUNS = {
    "data": {"synthetic_size": 64},
    "model": {"depth": 1, "width": 8},
    "train": {"steps": 5, "batch_size": 16, "eval_every": 5, "n_samples": 2, "init_images": 32},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs: ``plain`` and ``ema`` (train.ema_decay=0.9)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    train(tiny_config(RUNS), root / "plain", threads=1)
    train(tiny_config(RUNS, {"train": {"ema_decay": 0.9}}), root / "ema", threads=1)
    return root


def cli(*args):
    return CliRunner().invoke(main, ["sample", *map(str, args)])


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt PNG
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("name", ["plain", "ema"])
def test_default_sample_rewrites_the_grids_training_wrote(runs, tmp_path, name):
    """Same weights as training's final evaluation (the EMA's when kept) -> same bytes."""
    result = cli(runs / name, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    for grid in ("temperatures.png", "reconstructions.png"):
        assert (tmp_path / grid).read_bytes() == (runs / name / "samples" / grid).read_bytes(), grid
    record = json.loads((tmp_path / "sample.json").read_text())
    assert record["weights"] == ("ema" if name == "ema" else "model")
    assert record["reconstruction_max_abs_error"] < 1e-4
    assert f"reconstruction max abs error: {record['reconstruction_max_abs_error']:.3g}" in result.output


def test_ema_weights_are_not_the_trained_weights(runs):
    """Makes the byte comparison above able to fail: the raw weights sample differently."""
    _, model = load_trained_model(runs / "ema")
    ema_samples = sample_images(model, 0.7, 4, seed=0)
    model.load_state_dict(torch.load(runs / "ema" / "checkpoint.pt", weights_only=True)["model"])
    assert (sample_images(model, 0.7, 4, seed=0) - ema_samples).abs().max() > 1e-3


def test_interpolation_ends_are_the_reconstructions_and_every_level_is_linear(runs):
    config, model = load_trained_model(runs / "plain")
    x = preprocess(load_split(config.data, "test").images[:4], config.data.n_bits, noise=False)
    a, b = x[:2], x[2:]
    lines = interpolate(model, a, b, steps=5)
    assert lines.shape == (2, 5, *config.data.shape)
    assert (lines[:, 0] - a).abs().max() < 1e-4 and (lines[:, -1] - b).abs().max() < 1e-4
    assert torch.equal(lines[:, 0], reconstruct(model, a)) and torch.equal(lines[:, -1], reconstruct(model, b))
    with torch.no_grad():
        za, zb = model.encode(a)[0], model.encode(b)[0]
        for step, alpha in enumerate(torch.linspace(0, 1, 5)):
            z = model.encode(lines[:, step])[0]
            for level, (got, start, end) in enumerate(zip(z, za, zb, strict=True)):
                assert torch.allclose(got, torch.lerp(start, end, alpha), atol=1e-4), (step, level)
    assert (lines[:, 2] - a).abs().max() > 1e-2 and (lines[:, 2] - b).abs().max() > 1e-2


def test_samples_are_reproducible_and_grids_have_the_expected_size(runs, tmp_path):
    args = (runs / "ema", "-t", 0, "-t", 0.7, "-n", 4, "--interpolations", 2, "--steps", 3)
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = cli(*args, "--seed", seed, "--out", tmp_path / out)
        assert result.exit_code == 0, result.output

    def same(name, x, y):
        return (tmp_path / x / name).read_bytes() == (tmp_path / y / name).read_bytes()

    assert same("samples_T0.png", "a", "b") and same("samples_T0.7.png", "a", "b")
    assert same("samples_T0.png", "a", "c"), "temperature 0 is the prior's mean: no noise at all"
    assert not same("samples_T0.7.png", "a", "c")
    # 8x8 images, 1 pixel of padding around each: a grid of r rows and c columns is (9c+1)x(9r+1)
    expected = {
        "samples_T0.png": (2, 2),
        "samples_T0.7.png": (2, 2),
        "temperatures.png": (2, 4),
        "reconstructions.png": (2, 4),
        "interpolation.png": (2, 3),
    }
    for name, (rows, columns) in expected.items():
        assert png_size(tmp_path / "a" / name) == (9 * columns + 1, 9 * rows + 1), name
    record = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert sorted(record["files"]) == sorted(p.name for p in (tmp_path / "a").iterdir())
    assert record["temperatures"] == [0.0, 0.7] and record["run_status"]["state"] == "done"
    pairs = record["interpolation"]["pairs"]
    assert len(pairs) == 2 and len({i for pair in pairs for i in pair}) == 4


def test_default_output_folder_is_the_runs_samples_folder_unless_the_grids_would_change(runs, tmp_path):
    """Training's own grids (described by its samples.json) are rewritten only as they were;
    ``--seed 5 -n 2`` or ``-t 0.5`` goes to ``samples/custom``."""
    run = shutil.copytree(runs / "plain", tmp_path / "run")
    trained = {p.name: p.read_bytes() for p in (run / "samples").iterdir()}
    assert cli(run).exit_code == 0
    assert (run / "samples" / "interpolation.png").is_file() and (run / "samples" / "sample.json").is_file()
    for args in (["--seed", 5, "-n", 2], ["-t", 0.5]):
        result = cli(run, *args)
        assert result.exit_code == 0 and f"to {run / 'samples' / 'custom'}" in result.output, result.output
        assert {name: (run / "samples" / name).read_bytes() for name in trained} == trained
    assert json.loads((run / "samples" / "custom" / "sample.json").read_text())["temperatures"] == [0.5]
    assert (run / "samples" / "custom" / "samples_T0.5.png").is_file()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty", "not a run directory (no config.yaml)"),
        ("results", "looks like a results directory, pass one of its runs"),
        ("no_checkpoint", "no checkpoint yet (run state: pending)"),
        ("corrupt", "unreadable checkpoint"),
    ],
)
def test_cli_errors_are_one_line(runs, tmp_path, case, expected):
    path = tmp_path / "run"
    path.mkdir()
    if case == "results":
        (path / "runs").mkdir()
    if case in ("no_checkpoint", "corrupt"):
        shutil.copy(runs / "plain" / "config.yaml", path)
    if case == "corrupt":
        (path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = cli(path)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {path}")
    assert expected in result.output and "Traceback" not in result.output


def test_interpolation_runs_in_the_model_dtype_and_its_ends_invert_exactly_in_float64() -> None:
    """A float64 model interpolates in float64 (the alphas take the images' dtype), and its
    ends come back to the images to float64 precision."""
    model = tiny_glow()
    x = torch.rand(4, *TINY, dtype=torch.float64) - 0.5
    lines = interpolate(model, x[:2], x[2:], steps=3)
    assert lines.dtype == torch.float64
    assert (lines[:, 0] - x[:2]).abs().max() < 1e-10 and (lines[:, -1] - x[2:]).abs().max() < 1e-10
