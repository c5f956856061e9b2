"""The GERNE step's losses: the extrapolated loss of two batches, back-propagated once.

L_ext = L_lb + beta (L_lb - L_b) = (1 + beta) L_lb - beta L_b. By linearity of the gradient, one
backward pass on this scalar gives grad L_lb + beta (grad L_lb - grad L_b) exactly, and in
data-parallel training DDP all-reduces that one gradient: no second all-reduce is needed.

BatchNorm: in the paper's formulation the two gradients are computed separately, so each batch is
normalised by its own statistics in a model whose training-mode forward depends on the other
samples of its batch (BatchNorm). One plain forward over the concatenation would mix the biased and
the less-biased batch's statistics and change the gradient; two forward passes keep them apart but
cost 10-20% of the throughput of a conv net (two half-size passes use the kernels less well;
benchmarks/results/throughput_cpu.md). `forward="auto"` therefore runs ONE forward over the
concatenation inside `split_batch_statistics`, where every BatchNorm layer normalises each half
with that half's own statistics and updates its running statistics as two sequential passes would
(B_b's, then B_lb's): the losses, gradient and buffers of two passes (tested, float64) at the cost
of one pass plus a copy of each BatchNorm output. A model without BatchNorm (or one in eval mode)
gets one plain forward over the concatenation: the same gradient (tested). "split_bn", "two" and
"concat" force one way ("concat" on a BatchNorm model mixes the statistics on purpose). Use "two"
for a model whose BatchNorm layers do not see the batch along dim 0, or under nn.DataParallel.
The concatenation is a view, not a copy, when x_lb lies right after x_b in memory (two slices of
one gathered batch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Forward = Literal["auto", "split_bn", "two", "concat"]
FORWARDS = ("auto", "split_bn", "two", "concat")


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


def concat_batches(x_b: torch.Tensor, x_lb: torch.Tensor) -> torch.Tensor:
    """torch.cat([x_b, x_lb]), without a copy when x_lb lies right after x_b in the same memory."""
    adjacent = (
        x_b.is_contiguous() and x_lb.is_contiguous() and x_b.dtype == x_lb.dtype
        and x_b.device == x_lb.device and x_b.shape[1:] == x_lb.shape[1:]
        and not (x_b.requires_grad or x_lb.requires_grad)
        and x_b.untyped_storage().data_ptr() == x_lb.untyped_storage().data_ptr()
        and x_lb.storage_offset() == x_b.storage_offset() + x_b.numel()
    )
    if adjacent:  # e.g. two views of one gathered batch: a view of both, as a loader of 2n would give
        shape = (len(x_b) + len(x_lb), *x_b.shape[1:])
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        return x_b.as_strided(shape, strides, x_b.storage_offset())
    return torch.cat([x_b, x_lb])


@contextmanager
def split_batch_statistics(model: nn.Module, sizes: Sequence[int]) -> Iterator[nn.Module]:
    """Make every BatchNorm layer in training mode normalise each of the `sizes` chunks of its batch alone.

    For the duration of the context, each `_BatchNorm` module of `model.modules()` (so also inside a
    DistributedDataParallel wrapper) splits its input along dim 0 into `sizes`, runs its own forward
    on each chunk in order and concatenates the outputs: per-chunk batch statistics, and running
    statistics updated once per chunk, in order, exactly as sequential forward passes over the chunks
    would. Eval-mode layers are untouched. Nothing is added to the modules' state (state_dict keys and
    hooks unchanged); every layer is restored on exit, also when the body raises. Works through DDP;
    not under nn.DataParallel, whose replicas each see a slice of the batch.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"split_batch_statistics: sizes must be positive, got {sizes}")
    total = sum(sizes)
    patched: list[tuple[nn.Module, object]] = []

    def splitting(module: nn.Module, original):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if not module.training:
                return original(x)
            if x.shape[0] != total:
                raise ValueError(
                    f"split_batch_statistics: {type(module).__name__} got a batch of {x.shape[0]} "
                    f"but the split sizes {sizes} add up to {total}; for a model whose BatchNorm "
                    "layers do not see the batch along dim 0 use forward='two'"
                )
            return torch.cat([original(chunk) for chunk in x.split(sizes)])

        return forward

    try:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                own = m.__dict__.get("forward")  # an instance-level forward someone set, if any
                patched.append((m, own))
                m.forward = splitting(m, m.forward)
        yield model
    finally:
        for m, own in reversed(patched):
            if own is None:
                del m.forward
            else:
                m.forward = own


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
    if forward not in FORWARDS:
        raise ValueError(f"forward must be one of {', '.join(FORWARDS)}; got {forward!r}")
    if forward == "auto":
        forward = "split_bn" if model.training and has_batch_statistics(model) else "concat"
    sizes = [len(x_b), len(x_lb)]
    if forward == "two":
        logits_b, logits_lb = model(x_b), model(x_lb)
    else:
        split = split_batch_statistics(model, sizes) if forward == "split_bn" else contextlib.nullcontext()
        with split:
            logits_b, logits_lb = model(concat_batches(x_b, x_lb)).split(sizes)
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
