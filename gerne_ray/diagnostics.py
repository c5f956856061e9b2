"""Paired diagnostics: the two gradients of a GERNE step, all-reduced together, and their geometry.

Off by default (`method.paired_diagnostics`). Instead of one backward of L_ext (one all-reduce of
one gradient), grad L_b and grad L_lb are computed locally, all-reduced together in one flat buffer
(twice the bytes), and combined into the same update, grad L_lb + beta (grad L_lb - grad L_b).
Their norms and cosine show whether the extrapolation points away from the bias: a cosine near 1
means the two batches agree and the step is close to ERM's direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def paired_gradients(
    params: Sequence[torch.nn.Parameter],
    loss_b: torch.Tensor,
    loss_lb: torch.Tensor,
    beta: float,
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Set each parameter's .grad to the extrapolated gradient; return the pair's norms and cosine."""
    g_b = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    g_lb = torch.autograd.grad(loss_lb, params, allow_unused=True)
    flat = torch.cat([_flat(g, p) for g, p in zip(g_b, params, strict=True)]
                     + [_flat(g, p) for g, p in zip(g_lb, params, strict=True)])
    if all_reduce_mean is not None:
        flat = all_reduce_mean(flat)
    fb, flb = flat.chunk(2)
    update = flb + beta * (flb - fb)
    offset = 0
    for p in params:
        p.grad = update[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    norm_b, norm_lb = fb.norm(), flb.norm()
    cosine = torch.dot(fb, flb) / (norm_b * norm_lb).clamp_min(torch.finfo(flat.dtype).tiny)
    return {"grad_norm_b": norm_b.item(), "grad_norm_lb": norm_lb.item(), "grad_cosine": cosine.item()}


def _flat(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor:
    if grad is None:  # a parameter the loss does not reach
        return torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
    return grad.flatten()
