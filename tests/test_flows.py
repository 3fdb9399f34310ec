"""Flow layers against brute-force mathematics: invertibility to tolerance, log-dets that
cancel, and log-dets equal to slogdet of the autograd Jacobian in float64, for every part in
the registries."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from glow_repro.core.config import ModelConfig
from glow_repro.core.flows import (
    ActNorm,
    Affine,
    Coupling,
    FlowStep,
    InvConv1x1,
    InvConv1x1LU,
    Shuffle,
    Squeeze,
)
from glow_repro.core.registry import CONV1X1_FORMS, COUPLINGS, PERMUTATIONS, SCALES

SHAPE = (2, 4, 4, 4)  # batch, channels, height, width: D = 64 per example


def randomise(layer: torch.nn.Module, seed: int = 0, amount: float = 0.3) -> torch.nn.Module:
    """Move every parameter away from its (often identity) initialisation, mark ActNorms
    initialised, and switch to eval so no data-dependent init happens during the checks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(amount * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    for module in layer.modules():
        if isinstance(module, ActNorm):
            module.initialized.fill_(True)
    return layer.eval()


def layer_cases() -> dict[str, Callable[[], torch.nn.Module]]:
    """Every registered part alone, every permutation x coupling x scale as a flow step, and a
    step per 1x1 form, read from the registries when called: a newly registered part is
    checked without editing this file."""
    base = ModelConfig(width=8)
    cases: dict[str, Callable[[], torch.nn.Module]] = {
        "actnorm": lambda: ActNorm(4),
        "actnorm-factor3": lambda: ActNorm(4, logscale_factor=3.0),
        "squeeze": lambda: Squeeze(),
    }
    for name in PERMUTATIONS.names():
        cases[f"permutation-{name}"] = lambda n=name: PERMUTATIONS[n](4, base)
    for form in CONV1X1_FORMS.names():
        cases[f"conv1x1-{form}"] = lambda f=form: CONV1X1_FORMS[f](4)
    for coupling, scale in itertools.product(COUPLINGS.names(), SCALES.names()):
        config = base.model_copy(update={"coupling": coupling, "scale": scale})
        cases[f"coupling-{coupling}-{scale}"] = lambda c=config: Coupling(4, 8, COUPLINGS[c.coupling](c))
    for perm, coupling, scale in itertools.product(PERMUTATIONS.names(), COUPLINGS.names(), SCALES.names()):
        config = base.model_copy(update={"permutation": perm, "coupling": coupling, "scale": scale})
        cases[f"step-{perm}-{coupling}-{scale}"] = lambda c=config: FlowStep(4, c)
    for form in CONV1X1_FORMS.names():
        config = base.model_copy(update={"permutation": "conv1x1", "conv1x1_form": form})
        cases[f"step-conv1x1-{form}"] = lambda c=config: FlowStep(4, c)
    return cases


def brute_force_logdet(layer, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of the layer at each example, from the full autograd Jacobian."""
    out = []
    for example in x:
        jac = torch.autograd.functional.jacobian(lambda e: layer(e.unsqueeze(0))[0][0], example)
        d = example.numel()
        sign, logabs = torch.linalg.slogdet(jac.reshape(d, d))
        assert sign != 0, "Jacobian is singular"
        out.append(logabs)
    return torch.stack(out)


def check_float64_inverse_and_jacobian(make_layer: Callable[[], torch.nn.Module]) -> None:
    torch.manual_seed(1)
    layer = randomise(make_layer()).double()
    x = torch.randn(SHAPE, dtype=torch.float64)
    y, logdet = layer(x)
    x_back, inverse_logdet = layer.inverse(y)
    assert logdet.shape == (SHAPE[0],)
    assert (x_back - x).abs().max() < 1e-10
    assert (logdet + inverse_logdet).abs().max() < 1e-10
    torch.testing.assert_close(logdet, brute_force_logdet(layer, x), rtol=1e-8, atol=1e-8)


def check_float32_inverse(make_layer: Callable[[], torch.nn.Module]) -> None:
    torch.manual_seed(2)
    layer = randomise(make_layer())
    x = torch.randn(8, 4, 8, 8)
    y, logdet = layer(x)
    x_back, inverse_logdet = layer.inverse(y)
    assert (x_back - x).abs().max() < 1e-4
    assert (logdet + inverse_logdet).abs().max() < 1e-3


@pytest.mark.parametrize("name", sorted(layer_cases()))
def test_layer_float64_inverse_and_jacobian(name):
    check_float64_inverse_and_jacobian(layer_cases()[name])


@pytest.mark.parametrize("name", sorted(layer_cases()))
def test_layer_float32_inverse(name):
    check_float32_inverse(layer_cases()[name])


def test_affine_coupling_is_identity_at_init():
    """Zero-initialised last conv (section 3.3): shift 0; sigmoid(0 + 2) scale for sigmoid, 1 for exp."""
    x = torch.randn(3, 4, 4, 4)
    y, logdet = Coupling(4, 8, Affine(SCALES["exp"]))(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(3))


def test_squeeze_places_pixels_in_documented_channels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    # channel 2*dy + dx holds pixel (2i + dy, 2j + dx)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


def test_shuffle_is_reproducible_from_the_seed():
    torch.manual_seed(7)
    first = Shuffle(12).perm.clone()
    torch.manual_seed(7)
    assert torch.equal(first, Shuffle(12).perm)
    torch.manual_seed(8)
    assert not torch.equal(first, Shuffle(12).perm)


@pytest.mark.parametrize("cls", [InvConv1x1, InvConv1x1LU])
def test_conv1x1_starts_as_a_rotation(cls):
    layer = cls(6)
    weight = layer.weight() if cls is InvConv1x1LU else layer.weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(6), atol=1e-5, rtol=0)
    _, logdet = layer(torch.randn(2, 6, 3, 3))
    assert logdet.abs().max() < 1e-4


def test_actnorm_initialises_once_from_data():
    torch.manual_seed(0)
    layer = ActNorm(3)
    x = 2.0 + 5.0 * torch.randn(64, 3, 4, 4)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(torch.randn(64, 3, 4, 4))
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed on a second forward"


def test_actnorm_state_dict_load_does_not_reinitialise(tmp_path):
    torch.manual_seed(0)
    trained = ActNorm(3)
    trained(3.0 + torch.randn(32, 3, 4, 4))
    torch.save(trained.state_dict(), tmp_path / "actnorm.pt")
    loaded = ActNorm(3)
    loaded.load_state_dict(torch.load(tmp_path / "actnorm.pt"))
    assert bool(loaded.initialized)
    loaded.train()
    loaded(torch.randn(32, 3, 4, 4) * 10)  # would re-initialise if the flag were lost
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_folded_coupling_convs_compute_conv_then_actnorm():
    """The coupling NN runs conv + ActNorm and the scaled zero conv as single convolutions;
    they must equal the two-step definitions (Glow section 3.3, official code)."""
    from glow_repro.core.flows.coupling import CouplingNN

    torch.manual_seed(0)
    net = randomise(CouplingNN(2, 6, 8)).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    normed, _, hidden, _, zero = net.layers
    h = torch.relu(normed.norm(normed.conv(x))[0])
    h = torch.relu(hidden.norm(hidden.conv(h))[0])
    expected = zero.conv(h) * torch.exp(zero.logs * zero.logscale_factor)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)


def test_dense_log_abs_dets_are_one_slogdet_equal_to_each_layers_own(monkeypatch):
    """A level's dense 1x1 convolutions get log|det W| from one batched float64 ``slogdet``,
    within 1e-12 of the one each layer computes alone; other layers get None."""
    from glow_repro.core.flows.permute import dense_log_abs_dets

    torch.manual_seed(4)
    layers = [randomise(InvConv1x1(12), seed=1), Shuffle(12), randomise(InvConv1x1(12), seed=2), InvConv1x1LU(12)]
    alone = [torch.linalg.slogdet(layers[i].weight.double())[1] for i in (0, 2)]
    shapes = []
    slogdet = torch.linalg.slogdet
    monkeypatch.setattr(torch.linalg, "slogdet", lambda a: shapes.append(tuple(a.shape)) or slogdet(a))
    values = dense_log_abs_dets(layers)
    assert shapes == [(2, 12, 12)] and values[1] is None and values[3] is None
    for value, own in zip([values[0], values[2]], alone, strict=True):
        assert value.dtype == torch.float64 and abs(value - own) <= 1e-12 * abs(own)
    assert dense_log_abs_dets([Shuffle(12)]) == [None] and len(shapes) == 1


def test_a_step_given_its_conv1x1_log_det_equals_the_step_alone():
    torch.manual_seed(5)
    step = randomise(FlowStep(4, ModelConfig(width=8, conv1x1_form="dense")))
    x = torch.randn(SHAPE)
    y, logdet = step(x)
    given_y, given_logdet = step(x, torch.linalg.slogdet(step.permutation.weight.double())[1])
    assert torch.equal(given_y, y) and torch.equal(given_logdet, logdet)
