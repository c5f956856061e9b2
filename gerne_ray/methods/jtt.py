"""JTT, Just Train Twice (Liu et al., ICML 2021): retrain with the first model's errors upsampled.

Stage 1, once per job (gerne_ray.stage1.jtt_errors, cached in `<run>/stage1-jtt-<key>/` and shared
by every trial of a search and by a resumed job): class-balanced ERM (method erm) with the job's
optim settings (lr, weight decay, batch size; the paper tunes stage 1's separately) for T_max
epochs, recording after every epoch e which training rows the model misclassifies. Stage 2, this
method: the error set E is the rows misclassified after epoch T; every step draws B x K rows
(this worker: its share x K) with replacement, row i with probability proportional to
1 + lambda_up if i is in E and 1 otherwise, and back-propagates their mean cross-entropy.

Followed: github.com/anniesch/jtt. process_training.py `main` takes the error set
(`wrong_1_times`) from the stage-1 model's predictions at epoch `final_epoch`; run_expt.py builds
the upsampled set as `ConcatDataset([train_data, Subset(train_data, list(aug_indices) * up_weight)])`,
so an error row appears 1 + up_weight times (the paper's text says lambda_up times; the code is
followed here), and train.py / data/dro_dataset.py `get_loader` read it shuffled with plain mean
cross-entropy (loss_type erm). Deviations:
- The error set is the argmax of the model after epoch T (eval mode, over the whole training
  split), the paper's definition. The authors' code records the predictions made during training
  epoch `final_epoch` (counted from 0, train mode, each row seen by the model of that moment).
- Stage 1 uses the job's optim settings and class-balanced batches (this package's ERM); the
  authors run stage 1 with its own lr / weight decay and plain shuffled batches.
- Draws are with replacement from the weights (the upsampled set's distribution); the authors
  shuffle the upsampled set without replacement. An epoch is the loop's steps (optim.steps_per_epoch,
  default N / (K B) steps: N draws), not one pass over the N + lambda_up |E| rows of the upsampled set.
- The retrained model is selected by the job's search.metric over epochs, like every method here.

T's range: stage 1 trains T_max epochs (method.T_max; unset: T). A search draws T in [1, T_max]:
set T_max to search T. Defaults: T = 1 (the authors' CelebA and NLP runs use 1-2 epochs, Waterbirds
60), lambda_up = 20 (the authors' image grid is {20, 50, 100}, their NLP one {4, 5, 6}).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams, SearchRange
from gerne_ray.step import weighted_loss

log = logging.getLogger(__name__)
LAMBDA_UP_RANGE = (2.0, 100.0)  # the search's log-uniform range of lambda_up


# an error set above this share of the training rows warns: JTT's first stage is meant to fit the
# majority and miss the minority, which in the field's benchmarks is a few percent of the data
LARGE_ERROR_SET = 0.25


class JTTParams(MethodParams):
    """T: the stage-1 epoch whose errors are upsampled; lambda_up: the extra copies of each error row."""

    name: Literal["jtt"] = "jtt"
    T: int = Field(1, ge=1, description="the error set is what the ERM model misclassifies after epoch T")
    lambda_up: float = Field(20.0, ge=1, description="each error row is drawn 1 + lambda_up times as often")
    T_max: int | None = Field(None, ge=1, description=(
        "epochs of the stage-1 ERM model (unset: T); a search draws T in [1, T_max]"))

    @model_validator(mode="after")
    def _t_within_t_max(self) -> JTTParams:
        if self.T_max is not None and self.T > self.T_max:
            raise ValueError(f"T ({self.T}) must be at most T_max ({self.T_max}), the epochs stage 1 trains; "
                             "raise T_max or lower T")
        return self


def stage1_epochs(params: JTTParams) -> int:
    """How many epochs JTT's stage-1 ERM model trains: T_max, or T when T_max is unset."""
    return params.T_max if params.T_max is not None else params.T


@dataclass(frozen=True)
class JTTStage1:
    """JTT's first stage: `epochs` of ERM, every epoch's misclassified training rows (a bool matrix)."""

    epochs: int

    def run(self, spec: Any, dataset: Any, folder: Any) -> np.ndarray:
        """The bool matrix epochs x training rows, trained once and cached in the run folder."""
        from gerne_ray import stage1

        return stage1.jtt_errors(spec, dataset, folder, self.epochs)


class JTT(Method):
    """Mean cross-entropy over rows drawn with the stage-1 error set upsampled (weight 1 + lambda_up)."""

    name = "jtt"
    Params = JTTParams
    summary = "ERM, then retrain with the ERM model's epoch-T training errors upsampled (no attribute labels)"
    search_ranges = {
        "T": "int in [1, method.T_max] (T_max unset: T); stage 1 trains T_max epochs once per job",
    }
    search_params = {"lambda_up": SearchRange(*LAMBDA_UP_RANGE, log=True)}

    def __init__(self, params: JTTParams, stats, ctx, stage1: Any = None) -> None:
        super().__init__(params, stats, ctx, stage1)
        if stage1 is None:
            raise GerneError("method: jtt needs its first stage's error sets; run it with "
                             "gerne_ray.training.train or gerne_ray.tuning.tune (or pass Prepared.stage1)")
        errors = np.asarray(stage1, dtype=bool)
        if params.T > errors.shape[0]:
            raise GerneError(f"method.T: {params.T} is past the {errors.shape[0]} epochs JTT's first stage "
                             "trained; raise method.T_max")
        self.error_set = errors[params.T - 1]
        self.weights = np.where(self.error_set, 1.0 + params.lambda_up, 1.0)
        if ctx.rank == 0:
            log.info("jtt: error set of epoch %d: %d of %d training rows", params.T,
                     int(self.error_set.sum()), self.error_set.size)
        share = float(self.error_set.mean()) if self.error_set.size else 0.0
        if share > LARGE_ERROR_SET and ctx.rank == 0:
            log.warning("jtt: the stage-1 model misclassifies %.0f%% of the training rows after epoch %d: it "
                        "has not fitted the majority yet, so the error set is not the hard samples (on "
                        "Colored MNIST, seed 0, epoch 1 gives 47%%, epoch 2 0.7%%); raise method.T",
                        100 * share, params.T)
        if not self.error_set.any():
            log.warning("jtt: the stage-1 model misclassifies no training row after epoch %d: stage 2 draws "
                        "uniformly (ERM); lower method.T", params.T)

    def draw(self, sampler) -> tuple[np.ndarray, int]:
        """share x K rows, each error-set row 1 + lambda_up times as likely as any other."""
        return sampler.weighted(self.weights), 0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of the drawn rows."""
        return {"loss": weighted_loss(self.models["model"], batch.x, batch.y).loss}

    @classmethod
    def first_stage(cls, spec: Any) -> JTTStage1:
        """ERM for T_max epochs (T when unset), run once per job."""
        return JTTStage1(stage1_epochs(spec.method))

    @classmethod
    def suggest(cls, trial, stats, search, params: JTTParams) -> dict[str, Any]:
        """T in [1, T_max] (the epochs stage 1 trains), then lambda_up (log-uniform, search_params)."""
        return {"T": trial.suggest_int("T", 1, stage1_epochs(params)),
                **super().suggest(trial, stats, search, params)}

    @classmethod
    def describe(cls, params: JTTParams, stats) -> dict[str, Any]:
        """T, lambda_up and the stage-1 epochs (the error set's size is in the stage folder's stage1.json)."""
        return {"T": params.T, "lambda_up": params.lambda_up, "T_max": stage1_epochs(params)}
