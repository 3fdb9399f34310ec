"""Class-conditional Glow (the official code's ``--ycond``) in float64: the labels enter only
the priors, the marginal over classes is the model's log p(x), densities are normalised, and a
conditional run logs its classifier's accuracy and draws one sample row per class."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Normal

from glow_repro.core.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    run_identity,
    validate_model,
)
from glow_repro.core.evaluation import bpd_sum, class_sums
from glow_repro.core.model import Glow
from glow_repro.core.objective import bits_per_dim, conditional_training_loss
from glow_repro.run.train import train
from tests.test_flows import randomise

TINY = (1, 8, 8)
CLASSES = 3


def tiny_conditional(conditional_splits: bool = False, amount: float = 0.1) -> Glow:
    torch.manual_seed(0)
    config = ModelConfig(depth=2, levels=2, width=8, conditioning="class", conditional_splits=conditional_splits)
    return randomise(Glow(config, TINY, n_classes=CLASSES), amount=amount).double()


def labels(k: int, n: int) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def shifted(base: torch.Tensor, linear, k: int) -> torch.Tensor:
    """A prior's (mean, log-scale) channels plus the class shift written out: (W[:, k] + b) * exp(3 logs)."""
    shift = (linear.weight[:, k] + linear.bias) * torch.exp(linear.logs * linear.logscale_factor)
    return base + shift.view(1, -1, 1, 1)


def brute_force_logdet(model: Glow, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of x -> all latents at each example, from the full autograd Jacobian."""

    def latents(example):
        zs, _ = model.encode(example.unsqueeze(0))
        return torch.cat([z.flatten() for z in zs])

    return torch.stack(
        [
            torch.linalg.slogdet(torch.autograd.functional.jacobian(latents, example).reshape(example.numel(), -1))[1]
            for example in x
        ]
    )


def log_prior_by_hand(model: Glow, x: torch.Tensor, k: int) -> torch.Tensor:
    """Every latent's prior under class k with torch.distributions, the class shifts written out."""
    total = x.new_zeros(len(x))
    h = x
    for level in model.levels:
        h, _ = level.squeeze(h)
        for step in level.steps:
            h, _ = step(h)
        if level.split is not None:
            z1, z2 = h[:, : level.split.keep], h[:, level.split.keep :]
            params = level.split.prior(z1)
            if level.split.class_shift is not None:
                params = shifted(params, level.split.class_shift.linear, k)
            total = total + Normal(params[:, 0::2], params[:, 1::2].exp()).log_prob(z2).flatten(1).sum(1)
            h = z1
    top = model.top_prior
    params = shifted(top.bias * torch.exp(top.logs * top.logscale_factor), top.class_shift.linear, k)
    params = params.expand(len(x), -1, *h.shape[2:])
    return total + Normal(params[:, 0::2], params[:, 1::2].exp()).log_prob(h).flatten(1).sum(1)


@pytest.mark.parametrize("conditional_splits", [False, True])
def test_log_prob_given_a_class_is_the_change_of_variables_density(conditional_splits):
    model = tiny_conditional(conditional_splits)
    x = torch.randn(2, *TINY, dtype=torch.float64) * 0.3
    _, logdet = model.encode(x)
    torch.testing.assert_close(logdet, brute_force_logdet(model, x), rtol=1e-8, atol=1e-8)
    for k in range(CLASSES):
        torch.testing.assert_close(
            model.log_prob(x, labels(k, 2)), logdet + log_prior_by_hand(model, x, k), rtol=1e-10, atol=1e-10
        )
    # the classes' densities differ: the labels do reach the priors
    assert not torch.allclose(model.log_prob(x, labels(0, 2)), model.log_prob(x, labels(1, 2)))


@pytest.mark.parametrize("conditional_splits", [False, True])
def test_marginal_log_prob_is_the_logsumexp_over_classes(conditional_splits):
    model = tiny_conditional(conditional_splits)
    x = torch.randn(4, *TINY, dtype=torch.float64) * 0.3
    given = torch.stack([model.log_prob(x, labels(k, 4)) for k in range(CLASSES)], 1)
    expected = torch.logsumexp(given + math.log(1 / CLASSES), 1)
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    per_class, logits = model.log_prob_per_class(x)
    torch.testing.assert_close(per_class, given, rtol=1e-12, atol=1e-12)
    assert logits.shape == (4, CLASSES)


def test_each_class_density_is_normalised_and_matches_its_sampler():
    """E_{x ~ p(x|a)} [p(x|b) / p(x|a)] = 1 for every pair of classes (importance sampling)."""
    model = tiny_conditional(amount=0.05)
    torch.manual_seed(1)
    n = 1500
    for a in range(CLASSES):
        x = model.sample(n, temperature=1.0, y=a)
        log_a = model.log_prob(x, labels(a, n))
        for b in range(CLASSES):
            ratio = torch.exp(model.log_prob(x, labels(b, n)) - log_a)
            assert abs(ratio.mean().item() - 1) < 4 * ratio.std().item() / math.sqrt(n) + 1e-9


def test_encode_decode_round_trip_of_class_samples():
    model = tiny_conditional(conditional_splits=True)
    for k in range(CLASSES):
        x = model.sample(5, temperature=0.8, y=k)
        zs, _ = model.encode(x)
        assert (model.decode(zs) - x).abs().max() < 1e-10
        # at temperature 0 the top latent is its class's prior mean
        zs, _ = model.encode(model.sample(2, temperature=0.0, y=k))
        mean, _ = model.top_prior.params(2, y=labels(k, 2))
        torch.testing.assert_close(zs[-1], mean, rtol=0, atol=1e-9)


def test_a_new_conditional_model_is_its_unconditional_twin():
    """Zero-initialised class shifts and classifier, built without drawing random numbers."""
    config = ModelConfig(depth=2, levels=2, width=8)
    torch.manual_seed(0)
    plain = Glow(config, TINY).double()
    torch.manual_seed(0)
    conditional = Glow(
        config.model_copy(update={"conditioning": "class", "conditional_splits": True}), TINY, n_classes=CLASSES
    ).double()
    shared = plain.state_dict()
    assert not any("class" in key for key in shared)  # conditioning none: the keys it always had
    extra = {key for key in conditional.state_dict() if key not in shared}
    assert extra and all("class_shift" in key or key.startswith("classifier.") for key in extra)
    for key, value in shared.items():
        assert torch.equal(conditional.state_dict()[key], value), key
    x = torch.randn(3, *TINY, dtype=torch.float64)
    torch.testing.assert_close(conditional.log_prob(x, labels(2, 3)), plain.log_prob(x), rtol=0, atol=0)


def test_objective_adds_the_weighted_classifier_bits():
    model = tiny_conditional()
    x = torch.randn(4, *TINY, dtype=torch.float64) * 0.3
    y = torch.tensor([0, 1, 2, 1])
    objective, bpd, bits_y = conditional_training_loss(model, x, y, n_bits=5, class_weight=0.25)
    _, logits = model.log_prob_per_class(x)
    expected_bits = -torch.log_softmax(logits, 1).gather(1, y[:, None]).mean() / math.log(2)
    expected_bpd = bits_per_dim(model.log_prob(x, y), 64, 5).mean()
    torch.testing.assert_close(bits_y, expected_bits.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bpd, expected_bpd.float())
    torch.testing.assert_close(objective, bpd + 0.25 * bits_y)


def test_sampling_an_unknown_class_or_labelling_an_unconditional_model_is_refused():
    model = tiny_conditional()
    with pytest.raises(ValueError, match=r"class 3 is out of range: this model has 3 classes, 0\.\.2"):
        model.sample(2, y=3)
    with pytest.raises(ValueError, match="out of range"):
        model.sample(2, y=torch.tensor([0, -1]))
    plain = Glow(ModelConfig(depth=1, levels=1, width=4), TINY)
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(2, y=0)
    with pytest.raises(ValueError, match="2 or more classes"):
        Glow(ModelConfig(depth=1, levels=1, width=4, conditioning="class"), TINY)


@pytest.mark.parametrize("dataset, why", [("celeba", "celeba has attributes, not classes")])
def test_conditioning_needs_a_dataset_with_classes(dataset, why):
    raw = {"data": {"dataset": dataset}, "model": {"conditioning": "class"}}
    with pytest.raises(ConfigError) as err:
        validate_model(RunConfig, raw, "run.yaml")
    assert str(err.value).startswith("run.yaml: ") and why in str(err.value)
    assert "\n" not in str(err.value)


def test_new_keys_at_their_defaults_keep_run_identities():
    old = RunConfig().to_dict()
    for key in ("conditioning", "class_weight", "conditional_splits"):
        old["model"].pop(key)
    assert run_identity(RunConfig()) == run_identity(old)
    conditional = RunConfig.model_validate({"model": {"conditioning": "class"}})
    assert run_identity(conditional) != run_identity(RunConfig())
    assert run_identity(conditional)["model"]["conditioning"] == "class"


def test_conditional_run_logs_accuracy_and_draws_a_row_per_class(tmp_path):
    raw = {
        "data": {"dataset": "synthetic", "synthetic_size": 32},
        "model": {"depth": 1, "levels": 2, "width": 8, "conditioning": "class", "class_weight": 1.0},
        "train": {
            "steps": 3,
            "batch_size": 8,
            "eval_every": 3,
            "n_samples": 3,
            "init_images": 16,
            "device": "cpu",
            "progress": False,
            "sample_temperatures": [0.5],
        },
    }
    config = RunConfig.model_validate(raw)
    train(config, tmp_path)
    evals = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert all(0 <= row["test_accuracy"] <= 1 for row in evals)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_accuracy"] == evals[-1]["test_accuracy"]
    assert summary["final_test_bpd_marginal"] == evals[-1]["test_bpd_marginal"]
    assert evals[0]["test_accuracy"] == pytest.approx(0.5, abs=0.5)  # zero logits: every guess class 0
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["train_class_bits"] > 0 for line in metrics)
    grid = np.asarray(Image.open(tmp_path / "samples" / "classes.png"))
    assert grid.shape[0] == 2 * (8 + 1) + 1  # two classes (blob, stripes), one row each
    # the marginal bpd of the evaluation is the bpd of log p(x) the unconditional path computes
    from glow_repro.core.data import load_split
    from glow_repro.run.sampling import load_trained_model

    _, model = load_trained_model(tmp_path)
    test = load_split(config.data, "test")
    given, marginal, correct = class_sums(model, test.images, test.labels, 8, 16, torch.device("cpu"))
    assert marginal == pytest.approx(bpd_sum(model, test.images, 8, 16, torch.device("cpu")), rel=1e-6)
    assert given / 32 == pytest.approx(evals[-1]["test_bpd"], rel=1e-6)
    assert correct / 32 == pytest.approx(evals[-1]["test_accuracy"])


def test_a_conditional_run_resumes_exactly(tmp_path):
    """The labels of a batch follow the seeded order of its images, so a resumed run continues
    with the same labels and logs what one uninterrupted run logs."""
    from glow_repro.core.config import dump_run_config
    from glow_repro.run.rundir import RunDir

    raw = {
        "data": {"dataset": "synthetic", "synthetic_size": 32},
        "model": {"depth": 1, "levels": 2, "width": 8, "conditioning": "class", "class_weight": 1.0},
        "train": {
            "steps": 4,
            "batch_size": 8,
            "eval_every": 2,
            "checkpoint_every": 1,
            "n_samples": 2,
            "init_images": 16,
            "device": "cpu",
            "progress": False,
            "sample_temperatures": [0.5],
        },
    }
    whole = RunConfig.model_validate(raw)
    half = RunConfig.model_validate({**raw, "train": {**raw["train"], "steps": 2}})
    train(half, tmp_path / "split", threads=1)
    RunDir(tmp_path / "split").config.write_text(dump_run_config(whole))
    train(whole, tmp_path / "split", threads=1)
    train(whole, tmp_path / "whole", threads=1)
    timing = ("step_time", "images_per_s", "wall_time")

    def rows(name: str, log: str) -> list[dict]:
        return [
            {k: v for k, v in row.items() if k not in timing} for row in getattr(RunDir(tmp_path / name), log).read()
        ]

    for log in ("metrics", "evals"):
        assert rows("split", log) == rows("whole", log)
