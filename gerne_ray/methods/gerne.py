"""GERNE: the extrapolated loss of a biased and a less-biased batch (gerne-method.md sections 2-4).

Each step draws B samples per class twice: the biased batch (uniform within each class) and the
less-biased batch (p_lb(a|y) = (1 - c) alpha_ya + c / A), and back-propagates
L_ext = (1 + beta) L_lb - beta L_b once (gerne_ray.step). beta is checked against the exact bounds
the training groups give for c; the search draws c, then lambda = c (beta + 1) inside the bounds.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from gerne_ray import groups, space
from gerne_ray.diagnostics import paired_gradients
from gerne_ray.methods.base import Batch, Method, MethodParams, PseudoT
from gerne_ray.step import gerne_losses

DIAGNOSTIC_KEYS = ("grad_norm_b", "grad_norm_lb", "grad_cosine")


class GERNEParams(MethodParams):
    """c: how balanced the less-biased batch is; beta: the extrapolation factor (-1 is ERM)."""

    name: Literal["gerne"] = "gerne"
    c: float = Field(0.5, gt=0, le=1, description="less-biased batch: p_lb = (1 - c) alpha + c / A")
    beta: float = Field(0.0, description="extrapolation factor, inside the bounds the training groups give")
    t: PseudoT = 0.01
    forward: Literal["auto", "two", "concat", "split_bn"] = Field(
        "auto", description="auto: one forward, BatchNorm statistics per batch (split_bn) in a BN model"
    )
    paired_diagnostics: bool = Field(
        False, description="also all-reduce grad L_b and grad L_lb and report their norms and cosine"
    )


class BoundedBeta(Method):
    """A method configured by (c, beta) inside beta's bounds: its check, search space and result keys."""

    search_ranges = {
        "c": "search.space.c (a set or a range)",
        "beta": "lambda = c (beta + 1) uniform inside beta's bounds (search.bounds, search.margin)",
    }

    @classmethod
    def check(cls, params, stats: groups.GroupStats) -> None:
        """beta inside the exact bounds for c."""
        groups.check_beta(stats, params.c, params.beta)

    @classmethod
    def suggest(cls, trial, stats: groups.GroupStats, search, params) -> dict:
        """c, then lambda inside the bounds (beta = lambda / c - 1)."""
        return space.suggest_c_beta(trial, stats, search)

    @classmethod
    def check_search(cls, stats: groups.GroupStats, search) -> None:
        """A table without bounds (every class balanced) has no beta to search."""
        space.lambda_range(stats, search.bounds, search.margin)

    @classmethod
    def describe(cls, params, stats: groups.GroupStats) -> dict:
        """c, beta, lambda = c (beta + 1) and beta's exact bounds for c."""
        lo, hi = groups.exact_bounds(stats, params.c)
        return {"c": params.c, "beta": params.beta, "lambda": groups.lambda_of(params.beta, params.c),
                "beta_bounds_exact": [lo, hi]}


class GERNE(BoundedBeta):
    """Gradient extrapolation: L_ext = L_lb + beta (L_lb - L_b), one backward."""

    name = "gerne"
    Params = GERNEParams
    summary = "gradient extrapolation of a biased and a less-biased batch (this project's method)"
    loss_keys = ("loss", "loss_b", "loss_lb", "loss_ext")
    batches_per_step = 2
    uses_groups = True

    @property
    def sampler_c(self) -> float:
        """The less-biased batch's c."""
        return self.params.c

    def draw(self, sampler):
        """The biased batch then the less-biased one, as one array (one gather of both)."""
        biased = sampler.biased()
        return np.concatenate([biased, sampler.less_biased()]), len(biased)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """L_b, L_lb and L_ext (the loss)."""
        n, x, y = batch.n_biased, batch.x, batch.y
        out = gerne_losses(self.models["model"], x[:n], y[:n], x[n:], y[n:], self.params.beta,
                           self.params.forward)
        return {"loss": out.loss, "loss_b": out.loss_b, "loss_lb": out.loss_lb, "loss_ext": out.loss}

    def step_context(self):
        """With paired diagnostics, DDP must not all-reduce during the backward: paired_gradients does."""
        model = self.models["model"]
        return getattr(model, "no_sync", contextlib.nullcontext)() if self.params.paired_diagnostics \
            else contextlib.nullcontext()

    @property
    def diagnostic_keys(self) -> tuple[str, ...]:
        """The gradient pair's norms and cosine, with paired diagnostics."""
        return DIAGNOSTIC_KEYS if self.params.paired_diagnostics else ()

    def backward(self, losses: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
        """One backward of L_ext, or (paired diagnostics) the two gradients all-reduced together."""
        if not self.params.paired_diagnostics:
            return super().backward(losses, scale)
        ctx = self.ctx
        params = [p for p in self.models["model"].parameters() if p.requires_grad]
        mean = (lambda t: ctx.all_reduce_sum(t) / ctx.world_size) if ctx.world_size > 1 else None
        return paired_gradients(params, scale * losses["loss_b"], scale * losses["loss_lb"],
                                self.params.beta, mean)
