"""The GERNE step's losses: the extrapolated loss of two batches, back-propagated once.

L_ext = L_lb + beta (L_lb - L_b) = (1 + beta) L_lb - beta L_b. By linearity of the gradient, one
backward pass on this scalar gives grad L_lb + beta (grad L_lb - grad L_b) exactly, and in
data-parallel training DDP all-reduces that one gradient: no second all-reduce is needed.

BatchNorm: a model whose forward depends on the other samples of its batch (BatchNorm in training
mode) gets two forward passes, one per batch, so that each batch is normalised by its own
statistics as when the two gradients are computed separately (the paper's formulation). One
forward over the concatenation would mix the biased and the less-biased batch's statistics and
change the gradient. Any other model gets one forward over the concatenation: the same gradient
(tested) at about the cost of one pass. This is `forward="auto"`; "two" and "concat" force one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Forward = Literal["auto", "two", "concat"]


@dataclass
class StepLosses:
    """The loss to back-propagate and its parts (L_b and L_lb are None where a method lacks one)."""

    loss: torch.Tensor
    loss_b: torch.Tensor | None = None
    loss_lb: torch.Tensor | None = None


def extrapolated_loss(loss_b: torch.Tensor, loss_lb: torch.Tensor, beta: float) -> torch.Tensor:
    """L_ext = (1 + beta) L_lb - beta L_b."""
    return (1.0 + beta) * loss_lb - beta * loss_b


def has_batch_statistics(model: nn.Module) -> bool:
    """Whether the model's training-mode forward mixes samples of a batch (BatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def gerne_losses(
    model: nn.Module,
    x_b: torch.Tensor,
    y_b: torch.Tensor,
    x_lb: torch.Tensor,
    y_lb: torch.Tensor,
    beta: float,
    forward: Forward = "auto",
) -> StepLosses:
    """Mean cross-entropies of the biased and less-biased batches and their extrapolation."""
    two = forward == "two" or (forward == "auto" and model.training and has_batch_statistics(model))
    if two:
        logits_b, logits_lb = model(x_b), model(x_lb)
    else:
        logits_b, logits_lb = model(torch.cat([x_b, x_lb])).split([len(x_b), len(x_lb)])
    loss_b = F.cross_entropy(logits_b, y_b)
    loss_lb = F.cross_entropy(logits_lb, y_lb)
    return StepLosses(extrapolated_loss(loss_b, loss_lb, beta), loss_b, loss_lb)


def weighted_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
) -> StepLosses:
    """Mean cross-entropy of one batch, each sample's loss times its weight when given."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    loss = (losses * weight).mean() if weight is not None else losses.mean()
    return StepLosses(loss)
