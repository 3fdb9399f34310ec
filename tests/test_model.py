"""The whole Glow against the change-of-variables formula, sampling and temperature."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from glow_repro.core.config import ModelConfig
from glow_repro.core.model import Glow
from glow_repro.core.objective import bits_per_dim, postprocess, preprocess, quantize
from tests.test_flows import randomise

TINY = (1, 8, 8)


def tiny_glow(**overrides) -> Glow:
    torch.manual_seed(0)
    settings = dict(depth=2, levels=2, width=8, permutation="conv1x1", coupling="affine")
    return randomise(Glow(ModelConfig(**{**settings, **overrides}), TINY), amount=0.1).double()


def independent_log_prior(model: Glow, x: torch.Tensor) -> torch.Tensor:
    """Priors of every latent with torch.distributions, walking the public modules by hand."""
    total = x.new_zeros(x.shape[0])
    for level in model.levels:
        x, _ = level.squeeze(x)
        for step in level.steps:
            x, _ = step(x)
        if level.split is not None:
            keep = level.split.keep
            mean, logs = level.split.prior_params(x[:, :keep])
            total = total + Normal(mean, logs.exp()).log_prob(x[:, keep:]).flatten(1).sum(1)
            x = x[:, :keep]
    mean, logs = model.top_prior.params(x.shape[0])
    return total + Normal(mean, logs.exp()).log_prob(x).flatten(1).sum(1)


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize("permutation, form", [("conv1x1", "lu"), ("conv1x1", "dense"), ("shuffle", "lu")])
def test_log_prob_is_the_change_of_variables_density(permutation, form, coupling):
    model = tiny_glow(permutation=permutation, conv1x1_form=form, coupling=coupling)
    x = torch.randn(2, *TINY, dtype=torch.float64) * 0.3

    def latents(example):
        zs, _ = model.encode(example.unsqueeze(0))
        return torch.cat([z.flatten() for z in zs])

    zs, logdet = model.encode(x)
    assert sum(z[0].numel() for z in zs) == math.prod(TINY)
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(latents, x[b])
        _, logabs = torch.linalg.slogdet(jac.reshape(64, 64))
        torch.testing.assert_close(logdet[b], logabs, rtol=1e-8, atol=1e-8)
    expected = logdet + independent_log_prior(model, x)
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_a_forward_takes_one_slogdet_per_level(monkeypatch, grad_checkpointing):
    """The dense 1x1 convolutions' log-dets: one batched float64 call per level, not one per
    step, in the forward and in a backward that recomputes the steps."""
    model = tiny_glow(conv1x1_form="dense", depth=3, levels=3).float()
    model.grad_checkpointing = grad_checkpointing
    x = torch.randn(2, *TINY) * 0.3
    shapes = []
    slogdet = torch.linalg.slogdet
    monkeypatch.setattr(torch.linalg, "slogdet", lambda a: shapes.append(tuple(a.shape)) or slogdet(a))
    model.log_prob(x).sum().backward()
    assert shapes == [(3, 4, 4), (3, 8, 8), (3, 16, 16)]


def test_batched_log_dets_leave_the_float32_model_bit_identical(monkeypatch):
    """log p(x) and its gradient with the level's batched log-dets equal, bit for bit on the
    CPU, those with every step computing its own (LAPACK factors each matrix of a batch
    with the same routine as a single one)."""
    import glow_repro.core.model as model_module

    model = tiny_glow(conv1x1_form="dense", depth=3).float()
    x = torch.randn(4, *TINY) * 0.3

    def log_prob_and_gradient():
        model.zero_grad()
        log_prob = model.log_prob(x)
        log_prob.sum().backward()
        return log_prob.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    batched, batched_grads = log_prob_and_gradient()
    monkeypatch.setattr(model_module, "dense_log_abs_dets", lambda layers: [None] * len(layers))
    alone, alone_grads = log_prob_and_gradient()
    assert torch.equal(batched, alone)
    assert len(batched_grads) == len(alone_grads) and all(map(torch.equal, batched_grads, alone_grads))


def test_encode_decode_round_trip_float64():
    model = tiny_glow()
    x = torch.randn(3, *TINY, dtype=torch.float64)
    zs, _ = model.encode(x)
    assert (model.decode(zs) - x).abs().max() < 1e-10


def test_sample_encode_decode_round_trip():
    model = tiny_glow()
    torch.manual_seed(3)
    x = model.sample(4, temperature=0.8)
    assert x.shape == (4, *TINY)
    zs, _ = model.encode(x)
    assert (model.decode(zs) - x).abs().max() < 1e-10


def test_temperature_zero_gives_the_prior_means():
    model = tiny_glow()
    x = model.sample(3, temperature=0.0)
    zs, _ = model.encode(x)
    top_mean, _ = model.top_prior.params(3)
    torch.testing.assert_close(zs[-1], top_mean, rtol=0, atol=1e-9)
    # the factored latent equals its conditional prior mean given the kept half
    h, _ = model.levels[0].squeeze(x)
    for step in model.levels[0].steps:
        h, _ = step(h)
    mean, _ = model.levels[0].split.prior_params(h[:, : model.levels[0].split.keep])
    torch.testing.assert_close(zs[0], mean, rtol=0, atol=1e-9)
    # and two draws at temperature 0 are identical
    torch.testing.assert_close(model.sample(3, temperature=0.0), x)


def test_glow_supports_three_channels_and_three_levels():
    model = Glow(ModelConfig(depth=1, levels=3, width=8), (3, 16, 16))
    x = torch.rand(2, 3, 16, 16) - 0.5
    model.log_prob(x)
    zs, _ = model.encode(x)
    assert [tuple(z.shape[1:]) for z in zs] == [(6, 8, 8), (12, 4, 4), (48, 2, 2)]
    assert (model.decode(zs) - x).abs().max() < 1e-4


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="divisible by 2\\^levels"):
        Glow(ModelConfig(levels=3), (1, 28, 28))


def test_bpd_of_identity_glow_on_constant_images_matches_closed_form():
    """At init with reverse + additive + un-initialised ActNorm (eval mode) and zero priors,
    Glow is a pure reshape onto N(0, I), so bpd has a closed form."""
    model = Glow(ModelConfig(depth=2, levels=2, width=8, permutation="reverse", coupling="additive"), TINY)
    model.eval().double()
    value, n_bits = 200, 8
    images = torch.full((2, *TINY), value, dtype=torch.uint8)
    x = preprocess(images, n_bits, noise=False, dtype=torch.float64)
    bpd = bits_per_dim(model.log_prob(x), math.prod(TINY), n_bits)
    v = value / 256 - 0.5
    expected = (0.5 * math.log(2 * math.pi) + 0.5 * v * v + math.log(256)) / math.log(2)
    torch.testing.assert_close(bpd, torch.full((2,), expected, dtype=torch.float64))


def test_bpd_of_uniform_density_equals_n_bits():
    """The uniform density on [-0.5, 0.5]^D has log p = 0, i.e. exactly n_bits bits per dim."""
    for n_bits in (1, 5, 8):
        assert bits_per_dim(torch.zeros(3), 784, n_bits).tolist() == [float(n_bits)] * 3


def test_preprocess_quantises_and_dequantises_within_one_bin():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    for n_bits in (5, 8):
        bins = 2**n_bits
        clean = preprocess(images, n_bits, noise=False)
        noisy = preprocess(images, n_bits, generator=torch.Generator().manual_seed(0))
        assert clean.min() == -0.5 and clean.max() == pytest.approx(0.5 - 1 / bins)
        assert ((noisy - clean) >= 0).all() and ((noisy - clean) < 1 / bins).all()
        assert torch.equal(postprocess(noisy, n_bits), (quantize(images, n_bits) * (256 // bins)).to(torch.uint8))
