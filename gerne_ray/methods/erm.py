"""ERM: class-balanced empirical risk minimisation (GERNE's beta = -1), on biased batches."""

from __future__ import annotations

from typing import Literal

import torch

from gerne_ray.methods.base import Batch, Method, MethodParams
from gerne_ray.step import weighted_loss


class ERMParams(MethodParams):
    """ERM has no hyperparameters of its own (optim's lr and weight decay are searched for every method)."""

    name: Literal["erm"] = "erm"


class ERM(Method):
    """Mean cross-entropy over B samples per class drawn uniformly within each class."""

    name = "erm"
    Params = ERMParams
    summary = "class-balanced ERM on biased batches (GERNE at beta = -1)"

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of the batch."""
        return {"loss": weighted_loss(self.models["model"], batch.x, batch.y).loss}

    @classmethod
    def describe(cls, params: ERMParams, stats) -> dict:
        """ERM sits at beta = -1 (lambda = 0) on GERNE's axis."""
        return {"beta": -1.0, "lambda": 0.0}
