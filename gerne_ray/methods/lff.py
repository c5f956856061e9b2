"""LfF, Learning from Failure (Nam et al., NeurIPS 2020): a biased and a debiased model trained together.

Each step, on the same batch: the biased model (aux model "biased") is trained with the generalized
cross-entropy GCE = CE * q * p_y^q (p_y detached), which amplifies its reliance on easy (bias-aligned)
samples; the debiased model (the loop's "model", the one evaluated) is trained with each sample's
cross-entropy times w = l_b / (l_b + l_d + 1e-8), where l_b and l_d are exponential moving averages
of the two models' per-sample cross-entropies (indexed by the training row), each divided by the
maximum average over the training samples of the sample's class. The back-propagated loss is
mean(GCE_b) + mean(w CE_d): one backward, both optimisers stepped (the loop steps every optimiser).

Followed: alinlab/LfF, train.py (`train`: the per-step update with sample_loss_ema_b/_d, the
class-wise max normalisation, loss_weight = loss_b / (loss_b + loss_d + 1e-8),
loss = loss_b_update.mean() + loss_d_update.mean()), util.py (`EMA.update`:
parameter[index] = alpha parameter[index] + (1 - alpha updated[index]) loss, updated[index] = 1, so a
row's first average is its loss; `EMA.max_loss`: the max of parameter over every training row of the
label) and module/loss.py (`GeneralizedCELoss`, q = 0.7, including its extra factor q). The authors fix
q = 0.7 and alpha = 0.7 (train.py, EMA(..., alpha=0.7)): nothing is searched here either.

Deviations:
- Batches: `sampler.biased()`, B per class uniformly within the class, drawn with replacement (the
  project's common ERM-style draw), not the authors' uniform shuffle without replacement.
- Duplicate rows in one step (draws are with replacement; the authors' batches have none): every
  occurrence's new average is computed from the average before the step and the last occurrence
  (in rank order, then batch order) is stored, the "last write wins" of `parameter[index] = ...`;
  every occurrence is then weighted with that stored average.
- The class labels of the training rows: the authors' EMA holds them all up front; the loop does not
  hand them to a method, so each row's label is recorded when the row is first drawn. A row never
  drawn has average 0 (as in the authors' EMA) and the losses are non-negative, so the class maximum
  over the rows seen so far (at least 0) equals the authors' maximum over all the class's rows.
- A class maximum of 0 (every average of the class exactly 0, a float32 cross-entropy can underflow)
  gives a normalised loss of 0 rather than the authors' 0 / 0 = nan (which stops their run).
- The averages are kept in float64 on the CPU (the authors': float32); the per-sample losses they
  average are the models' float32 ones.
Weight decay: the authors train without it (Colored MNIST: Adam, lr 1e-3). With SGD and weight decay
0.01 (the GERNE paper's Colored MNIST optimiser) the debiased model collapsed to chance on real
Colored MNIST: as the biased model fits the colour, the debiased model's weights l_b / (l_b + l_d)
fall (mean 0.97 to 0.38 by epoch 16) while the decay keeps its strength, and the model shrinks to a
constant output (benchmarks/results/baselines_colored_mnist.md).
Data parallel: every worker all-gathers (rows, labels, CE_b, CE_d) of all workers' rows (detached)
and applies the same update in rank order, so the averages are identical on every worker; each
worker weights its own rows from the updated averages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams

WEIGHT_EPS = 1e-8  # train.py: loss_b / (loss_b + loss_d + 1e-8)


class LfFParams(MethodParams):
    """q: the biased model's GCE exponent; ema_alpha: the loss averages' decay (authors: 0.7 and 0.7)."""

    name: Literal["lff"] = "lff"
    q: float = Field(0.7, gt=0, le=1, description="generalized cross-entropy exponent of the biased model")
    ema_alpha: float = Field(0.7, ge=0, lt=1, description="decay of each sample's loss moving average")


def generalized_ce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample GCE of the authors' GeneralizedCELoss: CE * q * p_y^q with p_y detached."""
    p_y = F.softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    return F.cross_entropy(logits, y, reduction="none") * (p_y.detach() ** q * q)


def last_occurrences(rows: np.ndarray) -> np.ndarray:
    """Positions of each distinct row's last occurrence in rows (ascending by row)."""
    rows = np.asarray(rows)
    _, first_reversed = np.unique(rows[::-1], return_index=True)
    return len(rows) - 1 - first_reversed


class SampleLossEMA:
    """The two models' per-sample loss averages over the training rows, with the rows' labels as seen."""

    def __init__(self, num_rows: int, num_classes: int, alpha: float) -> None:
        self.num_classes, self.alpha = int(num_classes), float(alpha)
        self.loss_b = torch.zeros(num_rows, dtype=torch.float64)
        self.loss_d = torch.zeros(num_rows, dtype=torch.float64)
        self.updated = torch.zeros(num_rows, dtype=torch.bool)
        self.labels = torch.full((num_rows,), -1, dtype=torch.int64)  # -1: row not drawn yet
        self._class = self.labels.clamp(min=0)  # class_max's scatter index: a row not drawn counts as class 0

    def update(self, rows: np.ndarray, labels: np.ndarray, loss_b: np.ndarray, loss_d: np.ndarray) -> None:
        """EMA.update of both averages for one step's rows (a duplicated row: its last occurrence wins)."""
        keep = last_occurrences(rows)
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64)[keep])
        self.labels[idx] = self._class[idx] = torch.as_tensor(np.asarray(labels, dtype=np.int64)[keep])
        fresh = 1.0 - self.alpha * self.updated[idx].double()
        for average, loss in ((self.loss_b, loss_b), (self.loss_d, loss_d)):
            new = torch.as_tensor(np.asarray(loss, dtype=np.float64)[keep])
            average[idx] = self.alpha * average[idx] + fresh * new
        self.updated[idx] = True

    def class_max(self, average: torch.Tensor) -> torch.Tensor:
        """EMA.max_loss of every class: the largest average over its rows (0 where none is above 0)."""
        # a row not drawn yet has average 0, so it never raises a max that starts at 0 (losses are >= 0):
        # it may stand in any class, and no boolean mask (slow over every training row) is needed
        out = torch.zeros(self.num_classes, dtype=torch.float64)
        return out.scatter_reduce(0, self._class, average, "amax", include_self=True)

    def weights(self, rows: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
        """The debiased model's weights l_b / (l_b + l_d + 1e-8) of the rows, averages class-normalised."""
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        y = labels.cpu().long()
        normalised = []
        for average in (self.loss_b, self.loss_d):
            top = self.class_max(average)[y]
            normalised.append(torch.where(top > 0, average[idx] / torch.where(top > 0, top, 1.0), 0.0))
        loss_b, loss_d = normalised
        return loss_b / (loss_b + loss_d + WEIGHT_EPS)

    def state_dict(self) -> dict:
        """Both averages, the updated flags and the labels seen, as CPU tensors."""
        return {"ema_b": self.loss_b.clone(), "ema_d": self.loss_d.clone(), "updated": self.updated.clone(),
                "labels": self.labels.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (the same number of training rows)."""
        n = len(self.loss_b)
        saved = {k: torch.as_tensor(state[k]) for k in ("ema_b", "ema_d", "updated", "labels")}
        if any(v.shape != (n,) for v in saved.values()):
            raise GerneError(f"method: the checkpoint's LfF averages cover {saved['ema_b'].numel()} training "
                             f"rows, this data has {n}; resume with the same data or give this job "
                             "another name")
        self.loss_b, self.loss_d = saved["ema_b"].double().clone(), saved["ema_d"].double().clone()
        self.updated, self.labels = saved["updated"].bool().clone(), saved["labels"].long().clone()
        self._class = self.labels.clamp(min=0)


def gathered(parts: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The workers' (rows, labels, loss_b, loss_d), concatenated in rank order."""
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


class LfF(Method):
    """Biased model on GCE; debiased model on CE weighted by the relative difficulty of each sample."""

    name = "lff"
    Params = LfFParams
    summary = "LfF: a GCE-trained biased model reweights the debiased model's samples (no attribute labels)"
    loss_keys = ("loss", "loss_biased_gce", "loss_debiased_weighted", "loss_biased_ce", "loss_debiased_ce",
                 "weight_mean")

    def __init__(self, params: LfFParams, stats, ctx, stage1=None) -> None:
        super().__init__(params, stats, ctx, stage1)
        self.ema = SampleLossEMA(int(stats.counts.sum()), stats.counts.shape[0], params.ema_alpha)

    def aux_models(self, build: Callable[[], nn.Module]) -> dict[str, nn.Module]:
        """The biased model, built like the model (its own optimizer, the same settings)."""
        return {"biased": build()}

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Update the averages with all workers' rows; the biased model's GCE, the debiased's weighted CE."""
        logits_b = self.models["biased"](batch.x)
        logits_d = self.models["model"](batch.x)
        ce_b = F.cross_entropy(logits_b, batch.y, reduction="none")
        ce_d = F.cross_entropy(logits_d, batch.y, reduction="none")
        mine = (np.asarray(batch.rows, dtype=np.int64), batch.y.cpu().numpy().astype(np.int64),
                ce_b.detach().double().cpu().numpy(), ce_d.detach().double().cpu().numpy())
        self.ema.update(*gathered(self.ctx.all_gather(mine)))
        weight = self.ema.weights(batch.rows, batch.y).to(device=ce_d.device, dtype=ce_d.dtype)
        gce = generalized_ce(logits_b, batch.y, self.params.q).mean()
        weighted = (ce_d * weight).mean()
        return {"loss": gce + weighted, "loss_biased_gce": gce.detach(),
                "loss_debiased_weighted": weighted.detach(), "loss_biased_ce": ce_b.detach().mean(),
                "loss_debiased_ce": ce_d.detach().mean(), "weight_mean": weight.mean()}

    def state_dict(self) -> dict:
        """Both per-sample loss averages, their updated flags and the labels seen."""
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the averages."""
        self.ema.load_state_dict(state)

    @classmethod
    def describe(cls, params: LfFParams, stats) -> dict:
        """q and ema_alpha."""
        return {"q": params.q, "ema_alpha": params.ema_alpha}
