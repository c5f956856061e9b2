"""GERNE: the extrapolated loss of a biased and a less-biased batch (gerne-method.md sections 2-4).

Each step draws B samples per class twice: the biased batch (uniform within each class) and the
less-biased batch (p_lb(a|y) = (1 - c) alpha_ya + c / A), and back-propagates
L_ext = (1 + beta) L_lb - beta L_b once (gerne_ray.step). beta is checked against the exact bounds
the training groups give for c; the search draws c, then lambda = c (beta + 1) inside the bounds.

beta may move during training (`beta_schedule`, set once per epoch, `beta_at`): constant, or a
linear or cosine ramp from `beta` to `beta_end` after `warmup_epochs` held at `beta`. With E epochs
and W warmup epochs, epochs 1..W use beta and the ramp runs over epochs W+1..E, both ends included
(a linspace of E - W values): epoch e has progress p = (e - W - 1) / (E - W - 1), so epoch W+1 uses
beta and epoch E beta_end; linear gives beta + (beta_end - beta) p, cosine beta + (beta_end - beta)
(1 - cos(pi p)) / 2. Both are monotone between their ends, so the ends inside the bounds put every
epoch's beta inside them: `check` checks both ends before training, and every epoch's beta is checked
again as it is set (a trial's c and t, or a PBT perturbation, change the bounds). Each epoch's history
row records the beta and c it trained with.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from gerne_ray import groups, space
from gerne_ray.diagnostics import paired_gradients
from gerne_ray.errors import GerneError
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
    beta_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="beta per epoch: constant, or a linear or cosine ramp from beta to beta_end "
        "over the epochs after warmup_epochs (epoch warmup_epochs + 1 uses beta, the last epoch beta_end)"
    )
    beta_end: float | None = Field(
        None, description="linear, cosine: beta of the last epoch, inside the bounds for c like beta (a "
        "search draws the start, beta)"
    )
    warmup_epochs: int = Field(
        0, ge=0, description="linear, cosine: epochs held at beta before the ramp; at most optim.epochs - 2"
    )

    @model_validator(mode="after")
    def _schedule_is_complete(self) -> GERNEParams:
        if self.beta_schedule == "constant":
            if self.beta_end is not None:  # (a search sets beta: an equal beta_end would no longer be)
                raise ValueError(f"beta_end ({self.beta_end}) needs beta_schedule linear or cosine (it is "
                                 "constant); set the schedule, or remove beta_end")
            if self.warmup_epochs:
                raise ValueError("warmup_epochs needs beta_schedule linear or cosine (it is constant); set "
                                 "the schedule, or remove warmup_epochs")
        elif self.beta_end is None:
            raise ValueError(f"beta_schedule {self.beta_schedule} ramps from beta to beta_end: set beta_end")
        return self


def beta_at(params: GERNEParams, epoch: int, epochs: int) -> float:
    """beta of epoch `epoch` (1-based) of `epochs` under the params' schedule (see the module docstring)."""
    if params.beta_schedule == "constant" or epoch <= params.warmup_epochs:
        return params.beta
    ramp = epochs - params.warmup_epochs - 1  # steps between the ramp's first and last epoch
    p = min(1.0, (epoch - params.warmup_epochs - 1) / ramp) if ramp > 0 else 1.0
    if params.beta_schedule == "cosine":
        p = (1.0 - math.cos(math.pi * p)) / 2.0
    return params.beta + (params.beta_end - params.beta) * p


class BoundedBeta(Method):
    """A method configured by (c, beta) inside beta's bounds: its check, search space and result keys."""

    search_ranges = {
        "c": "search.space.c (a set or a range)",
        "beta": "lambda = c (beta + 1) uniform inside beta's bounds (search.bounds, search.margin)",
    }

    @classmethod
    def check(cls, params, stats: groups.GroupStats) -> None:
        """beta (and a schedule's beta_end) inside the exact bounds for c."""
        groups.check_beta(stats, params.c, params.beta)
        if getattr(params, "beta_end", None) is not None:
            groups.check_beta(stats, params.c, params.beta_end, "method.beta_end")

    @classmethod
    def suggest(cls, trial, stats: groups.GroupStats, search, params) -> dict:
        """c, then lambda inside the bounds (beta = lambda / c - 1)."""
        return space.suggest_c_beta(trial, stats, search)

    @classmethod
    def check_search(cls, stats: groups.GroupStats, search, params=None) -> None:
        """A table without bounds (every class balanced) has no beta to search; a schedule's fixed
        beta_end must lie inside the bounds for every c the search may draw."""
        space.lambda_range(stats, search.bounds, search.margin)
        end = getattr(params, "beta_end", None)
        if end is None:
            return
        cs = search.space.c
        for c in (cs if isinstance(cs, list) else [cs.low, cs.high]):
            lo, hi = groups.exact_bounds(stats, c)
            if not lo <= end <= hi:
                raise GerneError(
                    f"method.beta_end = {end:g} is outside beta's bounds [{lo:.6g}, {hi:.6g}] for c = {c:g}, "
                    "one of the values search.space.c offers (beta's bounds shrink as c grows); pick a "
                    "beta_end inside the bounds of the largest c, or narrow search.space.c"
                )

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Record the epoch's c and beta (constant here)."""
        return {"beta": self.params.beta, "c": self.params.c}

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

    def __init__(self, params, stats, ctx, stage1=None) -> None:
        super().__init__(params, stats, ctx, stage1)
        self.beta = params.beta  # this epoch's beta (beta_schedule), set by epoch_start

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Set the epoch's beta from the schedule, checked against the bounds for c; record it and c."""
        self.beta = beta_at(self.params, epoch, epochs)
        groups.check_beta(self.stats, self.params.c, self.beta,
                          "method.beta" if self.params.beta_schedule == "constant" else
                          f"method.beta_schedule's beta of epoch {epoch}")
        return {"beta": self.beta, "c": self.params.c}

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
        out = gerne_losses(self.models["model"], x[:n], y[:n], x[n:], y[n:], self.beta, self.params.forward)
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
        return paired_gradients(params, scale * losses["loss_b"], scale * losses["loss_lb"], self.beta, mean)
