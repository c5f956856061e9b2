"""Paired diagnostics: the update equals the one-backward extrapolated gradient, exactly."""

import torch
import torch.nn.functional as F
from torch import nn

from gerne_ray.diagnostics import paired_gradients
from gerne_ray.step import gerne_losses


def test_paired_update_equals_the_extrapolated_gradient_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    g = torch.Generator().manual_seed(1)
    x_b, x_lb = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(2))
    y_b, y_lb = (torch.randint(0, 3, (8,), generator=g) for _ in range(2))
    beta = 1.3
    gerne_losses(model, x_b, y_b, x_lb, y_lb, beta).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    losses = gerne_losses(model, x_b, y_b, x_lb, y_lb, beta)
    params = list(model.parameters())
    diag = paired_gradients(params, losses.loss_b, losses.loss_lb, beta)
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.grad, r, rtol=1e-12, atol=1e-14)
    gb = torch.autograd.grad(F.cross_entropy(model(x_b), y_b), params)
    glb = torch.autograd.grad(F.cross_entropy(model(x_lb), y_lb), params)
    fb, flb = torch.cat([t.flatten() for t in gb]), torch.cat([t.flatten() for t in glb])
    assert abs(diag["grad_norm_b"] - fb.norm().item()) < 1e-12
    assert abs(diag["grad_cosine"] - (fb @ flb / (fb.norm() * flb.norm())).item()) < 1e-12


def test_an_all_reduce_is_applied_once_to_both_gradients():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    losses = gerne_losses(model, x, y, x, y, 0.5)
    calls = []

    def halve(t):
        calls.append(t.numel())
        return t / 2

    paired_gradients(list(model.parameters()), losses.loss_b, losses.loss_lb, 0.5, halve)
    assert calls == [2 * sum(p.numel() for p in model.parameters())]
