"""Group DRO (Sagawa et al., ICLR 2020): minimise the q-weighted group losses, q by exponentiated gradient.

Each step, over the union of the workers' rows: per-group mean cross-entropies L_g of the K x A groups
g = y * A + a (a group absent from the batch has L_g = 0), then
q_g <- q_g exp(eta (L_g + adj / sqrt(n_g))) renormalised, and the loss sum_g q_g L_g with the new q.
q starts uniform. Followed: kohpangwei/group_DRO, loss.py (LossComputer.compute_group_avg,
compute_robust_loss); batches as its README's group DRO runs draw them (--reweight_groups: every group
equally often, data/dro_dataset.py get_loader), here `sampling: balanced` (GERNE's c = 1 batch).
Deviations:
- An empty training group (n_g = 0) is kept out of q (q_g = 0 from the start, no adjustment, no
  division by zero); the authors' q would give it mass and adj / sqrt(0) = inf. With every group
  non-empty, as in their datasets, nothing differs.
- The reported loss is sum_g q_g L_g; the authors' in-place `adjusted_loss += ...` also adds
  q . adj / sqrt(n) to the value they back-propagate (a constant: the same gradient).
- The update subtracts max_g eta (L_g + adj / sqrt(n_g)) inside exp (it cancels in the normalisation)
  so that no eta overflows; their automatic adjustment and --btl variant are not implemented.
- `balanced` draws B per class, each class's non-empty groups equally often: the authors' uniform
  over all groups when every group is non-empty. `biased` draws B per class uniformly within the
  class (class-balanced), not the authors' plain shuffle.
Data parallel: each worker all-reduces its per-group loss sums and counts (detached), so every worker
computes the same L_g and q; its back-propagated loss (W / scale) sum_g q_g S_g^r / N_g (S_g^r its own
rows' differentiable sum, N_g the union's count) gives, after the loop's scale and DDP's average, the
gradient of sum_g q_g L_g over the union.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams, SearchRange

ETA_RANGE = (1e-3, 1e-1)  # the search's log-uniform range of eta (the authors fix 0.01)


class GroupDROParams(MethodParams):
    """eta: q's step size; adj: the generalization adjustment C; how batches are drawn."""

    name: Literal["groupdro"] = "groupdro"
    eta: float = Field(0.01, gt=0, description="q's exponentiated-gradient step size (authors': 0.01)")
    adj: float = Field(0.0, ge=0, description=(
        "generalization adjustment C: C / sqrt(n_g) added to L_g in q's update (authors' runs: 0)"))
    sampling: Literal["balanced", "biased"] = Field("balanced", description=(
        "balanced: each class's groups equally often (the authors' --reweight_groups); "
        "biased: uniform within each class"))


class GroupDRO(Method):
    """Robust loss sum_g q_g L_g, q moved towards the groups of highest loss every step."""

    name = "groupdro"
    Params = GroupDROParams
    summary = "Group DRO: q-weighted group losses, q by exponentiated gradient (needs training attributes)"
    loss_keys = ("loss", "worst_group_loss", "q_max")
    uses_groups = True
    needs_train_attributes = True
    search_params = {"eta": SearchRange(*ETA_RANGE, log=True)}  # adj is not searched

    def __init__(self, params: GroupDROParams, stats, ctx, stage1=None) -> None:
        super().__init__(params, stats, ctx, stage1)
        counts = torch.tensor(stats.counts.ravel(), dtype=torch.float64, device=ctx.device)
        self.present = counts > 0
        self.adjustment = torch.where(self.present, params.adj / counts.clamp(min=1).sqrt(), 0.0)
        self.q = self.present.double() / self.present.sum()

    def draw(self, sampler):
        """A group-balanced (c = 1) or a biased batch."""
        return (sampler.less_biased() if self.params.sampling == "balanced" else sampler.biased()), 0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Update q with the union's group losses, then the robust loss with the new q."""
        per_sample = F.cross_entropy(self.models["model"](batch.x), batch.y, reduction="none")
        group = batch.y * self.stats.A + batch.a
        sums = per_sample.new_zeros(len(self.q)).index_add(0, group, per_sample)
        mine = torch.stack([sums.detach().double(), torch.bincount(group, minlength=len(self.q)).double()])
        total_sums, counts = self.ctx.all_reduce_sum(mine).to(self.q.device)
        denom = counts.clamp(min=1)  # compute_group_avg: an absent group's loss is 0
        with torch.no_grad():
            group_loss = total_sums / denom
            step = self.params.eta * (group_loss + self.adjustment)
            q = self.q * torch.exp(step - torch.where(self.present, step, -torch.inf).max())
            self.q = q / q.sum()
            worst = torch.where(counts > 0, group_loss, -torch.inf).max()
        weights = (self.q / denom).to(per_sample.dtype)
        loss = (self.ctx.world_size / batch.scale) * (weights * sums).sum()
        return {"loss": loss, "worst_group_loss": worst.to(loss.dtype), "q_max": self.q.max().to(loss.dtype)}

    def state_dict(self) -> dict:
        """q, the groups' weights."""
        return {"q": self.q.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore q."""
        q = torch.as_tensor(state["q"], dtype=torch.float64)
        if q.shape != self.q.shape:
            raise GerneError(f"method: the checkpoint's Group DRO q has {q.numel()} groups, this data "
                             f"{self.q.numel()}; resume with the same data or give this job another name")
        self.q = q.to(self.q.device)

    @classmethod
    def describe(cls, params: GroupDROParams, stats) -> dict:
        """eta and adj."""
        return {"eta": params.eta, "adj": params.adj}
