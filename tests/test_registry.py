"""Registries: a new coupling, permutation or dataset registered in one place is accepted by the
config, built by the model or the data loader, and checked by the parametrised layer tests; a
new objective registered in one place is trained, logged and evaluated by a run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glow_repro.core.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    validate_model,
)
from glow_repro.core.data import load_split
from glow_repro.core.datasets import Dataset, FileSource
from glow_repro.core.evaluation import bpd_sum
from glow_repro.core.flows import FlowLayer
from glow_repro.core.model import Glow
from glow_repro.core.objective import training_loss
from glow_repro.core.objectives import Loss, Objective
from glow_repro.core.registry import (
    CONV1X1_FORMS,
    COUPLINGS,
    DATASETS,
    OBJECTIVES,
    PERMUTATIONS,
    SCALES,
    Registry,
    one_of,
)
from glow_repro.errors import DataUnavailableError
from glow_repro.run.rundir import RunDir
from glow_repro.run.stability import health_signals
from glow_repro.run.train import train
from tests.conftest import tiny_config
from tests.test_flows import (
    check_float32_inverse,
    check_float64_inverse_and_jacobian,
    layer_cases,
)


@pytest.fixture
def scratch_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test registers is gone after it: each registry works on a copy of its parts."""
    for registry in (COUPLINGS, SCALES, PERMUTATIONS, CONV1X1_FORMS, DATASETS, OBJECTIVES):
        registry.names()  # the built-in parts register first
        monkeypatch.setattr(registry, "parts", dict(registry.parts))


class TanhAffine:
    """A toy elementwise map: ``yb = xb * exp(tanh(s)) + t``, log-det ``sum(tanh(s))``."""

    params = 2

    def forward(self, xb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale = torch.tanh(h[:, 1::2])
        return xb * torch.exp(log_scale) + h[:, 0::2], log_scale.flatten(1).sum(1)

    def inverse(self, yb: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale = torch.tanh(h[:, 1::2])
        return (yb - h[:, 0::2]) * torch.exp(-log_scale), -log_scale.flatten(1).sum(1)

    def signals(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


class Roll(FlowLayer):
    """A toy permutation: shift the channels by one, cyclically."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.roll(1, dims=1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.roll(-1, dims=1), y.new_zeros(y.shape[0])


def test_a_new_coupling_and_permutation_are_one_registration_each(scratch_registries) -> None:
    COUPLINGS.register("tanh-affine", lambda model: TanhAffine())
    PERMUTATIONS.register("roll", lambda channels, model: Roll())

    config = validate_model(
        ModelConfig, {"coupling": "tanh-affine", "permutation": "roll", "depth": 2, "levels": 1, "width": 8}, "toy.yaml"
    )
    with pytest.raises(
        ConfigError,
        match="model.permutation: must be one of 'conv1x1', 'shuffle', "
        r"'reverse' or 'roll' \(got 'conv2x2'\)",
    ):
        validate_model(RunConfig, {"model": {"permutation": "conv2x2"}}, "toy.yaml")

    model = Glow(config, (1, 4, 4))
    steps = model.levels[0].steps
    assert [type(step.layers[1]) for step in steps] == [Roll, Roll]
    assert all(isinstance(step.layers[2].transform, TanhAffine) for step in steps)
    x = torch.rand(3, 1, 4, 4)
    zs, _ = model.encode(x)
    torch.testing.assert_close(model.decode(zs), x, atol=1e-5, rtol=0)

    cases = layer_cases()
    toy = [name for name in cases if "roll" in name or "tanh-affine" in name]
    assert "permutation-roll" in toy and "coupling-tanh-affine-sigmoid" in toy
    assert "step-roll-tanh-affine-exp" in toy
    for name in ("permutation-roll", "coupling-tanh-affine-sigmoid", "step-roll-tanh-affine-exp"):
        check_float64_inverse_and_jacobian(cases[name])
        check_float32_inverse(cases[name])


def test_a_new_dataset_is_one_registration(scratch_registries, tmp_path: Path) -> None:
    def checkers(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
        board = (np.indices((4, 4)).sum(0) % 2 * 255).astype(np.uint8)
        n = 6 if split == "train" else 2
        return np.broadcast_to(board, (n, 1, 4, 4)), np.arange(n) % 2

    DATASETS.register("checkers", Dataset((1, 4, 4), "Checkers", generate=checkers, origin="toy"))
    cfg = validate_model(DataConfig, {"dataset": "checkers", "channels": 3}, "toy.yaml")
    assert cfg.shape == (3, 4, 4)
    test = load_split(cfg, "test")
    assert test.images.shape == (2, 3, 4, 4) and test.name == "checkers/test" and test.source == "toy"
    assert test.images[0, 0, 0].tolist() == [0, 255, 0, 255]
    assert test.labels.tolist() == [0, 1]
    with pytest.raises(ConfigError, match=r"data.dataset: must be one of 'mnist', .*'synthetic' or 'checkers'"):
        validate_model(RunConfig, {"data": {"dataset": "chess"}}, "toy.yaml")


def test_a_new_file_dataset_gets_the_common_file_handling(scratch_registries, tmp_path: Path) -> None:
    """Its reader reads; finding the files and the missing-files message come from data.py."""

    def read_npy(base, paths, split, limit, size):
        images = np.load(paths[0])
        return images, np.zeros(len(images), dtype=np.int64)

    files = FileSource(layouts=("npy",), names=lambda split: (f"{split}.npy",), read=read_npy, fetch=None, url=None)
    DATASETS.register("npy", Dataset((1, 2, 2), "npy", files=lambda: files))
    cfg = DataConfig(dataset="npy", root=tmp_path)
    with pytest.raises(DataUnavailableError, match=r"npy/test: data files not found: test.npy; looked in"):
        load_split(cfg, "test", cache_dir=tmp_path / "cache")
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "test.npy", np.full((3, 1, 2, 2), 7, dtype=np.uint8))
    test = load_split(cfg, "test", cache_dir=tmp_path / "cache")
    assert test.images.shape == (3, 1, 2, 2) and int(test.images.max()) == 7
    assert test.source == str(tmp_path / "npy")


def test_layers_report_their_own_health(scratch_registries) -> None:
    """The monitor reads any flow layer's signals; it knows no layer classes."""

    class Shrinking(Roll):
        def health(self) -> dict[str, float]:
            return {"actnorm_scale_min": 1e-6}

    model = torch.nn.Sequential(Roll(), Shrinking())
    assert health_signals(model) == {"actnorm_scale_min": (1e-6, "1")}


def test_registry_names_errors_and_wording() -> None:
    assert PERMUTATIONS.names() == ("conv1x1", "shuffle", "reverse")
    assert COUPLINGS.names() == ("affine", "additive")
    assert SCALES.names() == ("sigmoid", "exp")
    assert CONV1X1_FORMS.names() == ("lu", "dense")
    assert DATASETS["cifar10"].shape == (3, 32, 32)
    assert one_of(("a",)) == "'a'" and one_of(("a", "b", "c")) == "'a', 'b' or 'c'"
    with pytest.raises(KeyError, match="unknown coupling 'spline': must be one of 'affine' or 'additive'"):
        COUPLINGS["spline"]
    with pytest.raises(ValueError, match="give files or generate"):
        Dataset((1, 2, 2), "neither")
    registry: Registry[int] = Registry("number", "glow_repro.core.registry")
    registry.register("one", 1)
    with pytest.raises(ValueError, match="number 'one' is registered twice"):
        registry.register("one", 2)


def test_reading_a_data_config_imports_no_torch() -> None:
    """The analysis validates data configs; the dataset records it reads are torch-free."""
    code = ("import sys; from glow_repro.core.config import DataConfig; "
            "assert DataConfig(dataset='cifar10').shape == (3, 32, 32); "
            "sys.exit('torch' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "config imports torch"


class BpdInNats(Objective):
    """A toy objective: the unconditional one, also logging the bpd as nats per dimension."""

    step_terms = ("train_nats",)
    eval_metrics = ("test_bpd", "test_nats")

    def loss(self, forward, x, y):
        bpd = training_loss(forward, x, self.settings.n_bits, self.settings.precision)
        return Loss(bpd, bpd, (bpd * math.log(2.0),))

    def eval_sums(self, model, data):
        total = bpd_sum(
            model,
            data.images,
            self.settings.n_bits,
            data.batch_size,
            data.device,
            rank=data.rank,
            world_size=data.world_size,
        )
        return [total, total * math.log(2.0)]


def test_a_new_objective_is_one_registration(scratch_registries, tmp_path: Path) -> None:
    """Its terms are what the run minimises and logs, its sums what evaluations and the
    summary report; the config names it by ``model.conditioning``."""
    OBJECTIVES.register("nats", BpdInNats)
    config = tiny_config(
        {"train": {"steps": 3, "batch_size": 8, "eval_every": 3, "n_samples": 2}, "model": {"conditioning": "nats"}}
    )
    summary = train(config, tmp_path / "run", threads=1)
    run = RunDir(tmp_path / "run")
    steps, evals = run.metrics.read(), run.evals.read()
    assert summary["state"] == "done" and [row["step"] for row in steps] == [1, 2, 3]
    assert all(row["train_nats"] == pytest.approx(row["train_bpd"] * math.log(2.0)) for row in steps)
    assert [row["step"] for row in evals] == [0, 3]
    assert all(row["test_nats"] == pytest.approx(row["test_bpd"] * math.log(2.0)) for row in evals)
    assert summary["final_test_nats"] == evals[-1]["test_nats"]
