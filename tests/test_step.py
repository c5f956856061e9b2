"""The GERNE step's gradient, exactly, in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gerne_ray.step import extrapolated_loss, gerne_losses, has_batch_statistics, weighted_loss


def _model(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_b = torch.randn(12, 6, generator=g, dtype=torch.float64)
    x_lb = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y_b, y_lb = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (9,), generator=g)
    return x_b, y_b, x_lb, y_lb


def _grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("beta", [-1.0, -0.3, 0.0, 0.7, 1.22, 2.5])
@pytest.mark.parametrize("forward", ["two", "concat"])
def test_one_backward_equals_extrapolated_gradients(beta, forward):
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_b = _grad(model, F.cross_entropy(model(x_b), y_b))
    g_lb = _grad(model, F.cross_entropy(model(x_lb), y_lb))
    g_ext = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, beta, forward).loss)
    assert _rel(g_ext, g_lb + beta * (g_lb - g_b)) < 1e-10


def test_beta_minus_one_is_erm_on_the_biased_batch():
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_erm = _grad(model, F.cross_entropy(model(x_b), y_b))
    g = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, -1.0).loss)
    assert _rel(g, g_erm) < 1e-10


def test_c_one_beta_zero_is_the_gradient_on_the_group_balanced_batch():
    # With c = 1 the less-biased batch is group-balanced; beta = 0 keeps only its loss.
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_bal = _grad(model, F.cross_entropy(model(x_lb), y_lb))
    g = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.0).loss)
    assert _rel(g, g_bal) < 1e-10


def test_concat_and_two_forwards_agree_without_batchnorm():
    model = _model()
    assert not has_batch_statistics(model)
    x_b, y_b, x_lb, y_lb = _batches()
    two = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.8, "two")
    g_two = _grad(model, two.loss)
    concat = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.8, "concat")
    g_concat = _grad(model, concat.loss)
    assert torch.allclose(two.loss_b, concat.loss_b, rtol=1e-12)
    assert torch.allclose(two.loss_lb, concat.loss_lb, rtol=1e-12)
    assert _rel(g_concat, g_two) < 1e-10


def test_batchnorm_models_get_two_forwards_with_their_own_statistics():
    model = _model(batchnorm=True)
    assert has_batch_statistics(model)
    x_b, y_b, x_lb, y_lb = _batches()
    x_lb = x_lb + 3.0  # a shifted batch: mixing the statistics would change the loss
    auto = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.5, "auto")
    two = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.5, "two")
    concat = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.5, "concat")
    assert torch.equal(auto.loss, two.loss)
    assert not torch.allclose(auto.loss, concat.loss)
    # each batch is normalised by its own statistics: the loss on B_b alone equals L_b
    assert torch.allclose(two.loss_b, F.cross_entropy(model(x_b), y_b), rtol=1e-12)


def test_extrapolated_loss_formula():
    lb, llb = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert float(extrapolated_loss(lb, llb, 1.5)) == pytest.approx(2.5 * 0.5 - 1.5 * 2.0)


def test_weighted_loss_is_the_mean_of_weighted_sample_losses():
    model = _model()
    x, y, _, _ = _batches()
    w = torch.linspace(0.0, 2.0, len(y), dtype=torch.float64)
    expected = (F.cross_entropy(model(x), y, reduction="none") * w).mean()
    assert torch.allclose(weighted_loss(model, x, y, w).loss, expected, rtol=1e-12)
    assert torch.allclose(weighted_loss(model, x, y).loss, F.cross_entropy(model(x), y), rtol=1e-12)
