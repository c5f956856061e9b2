"""Resampling: group-balanced batches (GERNE's c = 1, beta = 0)."""

from __future__ import annotations

from typing import Literal

import torch

from gerne_ray.methods.base import Batch, Method, MethodParams, PseudoT
from gerne_ray.step import weighted_loss


class ResampleParams(MethodParams):
    """Resampling has no hyperparameter but t (unknown attributes)."""

    name: Literal["resample"] = "resample"
    t: PseudoT = 0.01


class Resample(Method):
    """Mean cross-entropy over B samples per class, the groups of each class drawn equally often."""

    name = "resample"
    Params = ResampleParams
    summary = "group-balanced batches (GERNE at c = 1, beta = 0)"
    uses_groups = True

    def draw(self, sampler):
        """A group-balanced (c = 1) batch."""
        return sampler.less_biased(), 0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of the batch."""
        return {"loss": weighted_loss(self.models["model"], batch.x, batch.y).loss}

    @classmethod
    def describe(cls, params: ResampleParams, stats) -> dict:
        """Resampling sits at c = 1, beta = 0 (lambda = 1) on GERNE's axis."""
        return {"c": 1.0, "beta": 0.0, "lambda": 1.0}
