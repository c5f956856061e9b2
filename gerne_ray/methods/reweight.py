"""Reweighting: the loss form of GERNE's expectation, one biased batch with group weights.

Each sample of group (y, a) is weighted by p_ext(a|y) / alpha_ya (groups.reweight_weights), so the
expected loss is GERNE's (1/K) sum_g p_ext(a|y) L_g for the same c and beta.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from gerne_ray import groups
from gerne_ray.methods.base import Batch, MethodParams, PseudoT
from gerne_ray.methods.gerne import BoundedBeta
from gerne_ray.step import weighted_loss


class ReweightParams(MethodParams):
    """The (c, beta) whose expected GERNE objective the weights reproduce."""

    name: Literal["reweight"] = "reweight"
    c: float = Field(0.5, gt=0, le=1, description="GERNE objective's c: p_lb = (1 - c) alpha + c / A")
    beta: float = Field(0.0, description="inside the bounds the training groups give for c")
    t: PseudoT = 0.01


class Reweight(BoundedBeta):
    """Mean of p_ext / alpha weighted cross-entropies over a biased batch."""

    name = "reweight"
    Params = ReweightParams
    summary = "group-weighted loss on biased batches, GERNE's objective in expectation"
    uses_groups = True

    def __init__(self, params, stats, ctx, stage1=None) -> None:
        super().__init__(params, stats, ctx, stage1)
        weights = groups.reweight_weights(stats, params.c, params.beta)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=ctx.device)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Weighted mean cross-entropy."""
        return {"loss": weighted_loss(self.models["model"], batch.x, batch.y,
                                      self.weights[batch.y, batch.a]).loss}
