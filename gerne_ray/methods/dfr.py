"""DFR (Kirichenko et al., ICLR 2023): ERM features, the last layer refitted on half of validation.

The network trains by ERM (class-balanced biased batches, mean cross-entropy, as gerne_ray.methods.erm).
`prepare_dataset` cuts the validation split in two once per job: in every group (y, a), ceil(n / 2)
rows drawn with the seed `method.seed` get the split code DFR_TRAIN (3), the "DFR training half"; the
rest stay validation (code 1), so the loop's val metrics, and model selection, read only the other
half. After every epoch `eval_model` takes the inputs of the model's last nn.Linear (eval mode, no
grad) on the DFR training half, standardises them (StandardScaler), fits an L1 logistic regression
(liblinear, C = method.C) on each of `num_retrains` group-balanced subsets (every group present
subsampled to the smallest present group's size), averages the coefficients and intercepts, folds the
scaler into them and returns a copy of the model with that layer as its last nn.Linear; val and test
are evaluated with it.

Followed: PolinaKirichenko/deep_feature_reweighting, dfr_evaluate_spurious.py, dfr_on_validation_tune
(the validation split halved, one half to fit, the other to score; balance_val: group-balanced
subsets of the fitting half; C_OPTIONS = [1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]; no class weights when
balanced without training data, notrain_dfr_val) and dfr_on_validation_eval (num_retrains = 20 fits
on fresh balanced subsets, coef_ and intercept_ averaged; LogisticRegression(penalty="l1", C=c,
solver="liblinear"); one StandardScaler shared by the retrains).
Deviations:
- The halving is fixed for the whole job, stratified by group and seeded (method.seed); the authors
  reshuffle all of validation in each tuning retrain, unstratified. A fixed split is what a per-epoch
  selection metric needs; stratification keeps every group of validation in both halves (a group of
  one row goes to the fitting half, like the authors' larger half).
- C is a hyperparameter searched by `gerne-ray tune` (log-uniform over the authors' grid's range
  [0.01, 1]) and scored by val metrics of the selection half, instead of the authors' grid scored by
  mean worst-group accuracy over tuning retrains; the head scored on test is the one fitted on the
  DFR training half, not refitted on all of validation as their dfr_on_validation_eval does.
- The scaler is fitted on the features of the whole DFR training half; the authors' tuning fits it
  on the balanced subset it trains on and their evaluation on the training split's features. Features
  of the training split would cost a pass over it every epoch; one scaler for all retrains keeps their
  coefficients in one space, as in their evaluation, so that averaging them means the same.
- Subsets are drawn among the groups present in the fitting half (the authors' min over range(n_groups)
  would be 0 for an absent group) and their rows kept in index order (liblinear's result does not
  depend on it beyond rounding).
- Multiclass (K >= 3): liblinear is binary only (sklearn >= 1.8 refuses K >= 3), so each class is
  fitted one-vs-rest, as liblinear and OneVsRestClassifier do; logit k is that fit's decision
  function. Binary: logits (0, w.x + b), so softmax gives sklearn's predict_proba and argmax its predict.
- liblinear's random_state is method.seed for every fit (the authors leave it to NumPy's global state):
  every Ray Train worker fits the head itself, from the same features, and gets the same head.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from gerne_ray.data.base import VAL, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams, SearchRange
from gerne_ray.step import weighted_loss

DFR_TRAIN = 3  # split code of the validation rows the last layer is fitted on (train, val, test: 0, 1, 2)
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the authors' C_OPTIONS (Waterbirds)
C_RANGE = (min(C_GRID), max(C_GRID))  # the search's log-uniform range of C
FEATURE_BATCH = 256  # rows per forward pass when the features are extracted


class DFRParams(MethodParams):
    """C: inverse strength of the L1 penalty; num_retrains: balanced subsets averaged; seed: their draws."""

    name: Literal["dfr"] = "dfr"
    C: float = Field(1.0, gt=0, description=(
        "inverse L1 regularisation strength of the last layer's logistic regression (authors' grid 0.01-1)"))
    num_retrains: int = Field(20, ge=1, description=(
        "logistic regressions on group-balanced subsets whose coefficients are averaged (authors': 20)"))
    seed: int = Field(0, ge=0, le=2**32 - 1, description=(
        "seed of the validation halving and of the balanced subsets (fixed across training seeds)"))


# -- the pure part: halving, subsets, the head -----------------------------------------------------

def halve_validation(dataset: GroupedDataset, seed: int) -> GroupedDataset:
    """A copy whose validation rows are cut in two, stratified by group: ceil(n / 2) of each get DFR_TRAIN."""
    if np.any(dataset.split == DFR_TRAIN):
        raise GerneError(
            f"data.dataset: {dataset.name} already uses split code {DFR_TRAIN}, which dfr reserves for the "
            "validation rows it fits the last layer on; use split codes 0, 1, 2 (train, val, test)"
        )
    val = dataset.indices(VAL)
    if len(val) == 0:
        raise GerneError(
            f"method.name: dfr fits the last layer on half of the validation split, but {dataset.name} has "
            "no validation samples; use a dataset with a validation split"
        )
    absent = sorted(set(range(dataset.num_classes)) - set(np.unique(dataset.y[val]).tolist()))
    if absent:
        raise GerneError(
            f"method.name: dfr fits the last layer on validation samples, but {dataset.name}'s validation "
            f"split has no sample of class(es) {absent}; use data whose validation split holds every class"
        )
    rng = np.random.default_rng([seed, 0])
    group = dataset.y[val] * dataset.num_attributes + dataset.a[val]
    split = dataset.split.copy()
    for g in np.unique(group):
        rows = val[group == g]
        split[rng.permutation(rows)[: math.ceil(len(rows) / 2)]] = DFR_TRAIN
    out = copy.copy(dataset)
    out.split = split
    return out


def balanced_subsets(group: np.ndarray, num: int, rng: np.random.Generator) -> list[np.ndarray]:
    """num subsets of positions into group: every group present subsampled to the smallest one's size."""
    present, sizes = np.unique(group, return_counts=True)
    size = int(sizes.min())
    members = [np.flatnonzero(group == g) for g in present]
    return [np.sort(np.concatenate([rng.permutation(m)[:size] for m in members])) for _ in range(num)]


def l1_logistic_regression(C: float, random_state: int):
    """sklearn's L1 logistic regression with liblinear (spelled for sklearn before and after 1.8)."""
    from sklearn.linear_model import LogisticRegression

    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=random_state)
    return LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=random_state)


def fit_logits(z: np.ndarray, y: np.ndarray, num_classes: int, C: float,
               random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K, d) and biases (K,) of K logits from L1 logistic regression on standardised z.

    K = 2: one fit, logits (0, w.z + b); K >= 3: one-vs-rest, logit k from the fit of y == k.
    """
    if num_classes == 2:
        fit = l1_logistic_regression(C, random_state).fit(z, y)
        weight = np.concatenate([np.zeros_like(fit.coef_), fit.coef_])
        return weight, np.array([0.0, float(fit.intercept_[0])])
    fits = [l1_logistic_regression(C, random_state).fit(z, (y == k).astype(np.int64))
            for k in range(num_classes)]
    return np.concatenate([f.coef_ for f in fits]), np.array([float(f.intercept_[0]) for f in fits])


def fold_scaler(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (weight, bias) on raw features x equal to (weight, bias) on (x - mean) / scale."""
    folded = weight / scale
    return folded, bias - folded @ mean


def fit_head(features: np.ndarray, y: np.ndarray, subsets: list[np.ndarray], num_classes: int,
             C: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """The averaged head over the subsets, on raw features: weight (K, d) and bias (K,), float64."""
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    fits = [fit_logits(z[s], y[s], num_classes, C, random_state) for s in subsets]
    weight = np.mean([w for w, _ in fits], axis=0)
    bias = np.mean([b for _, b in fits], axis=0)
    return fold_scaler(weight, bias, scaler.mean_, scaler.scale_)


# -- the network: the last layer's inputs, and a copy with a new last layer -------------------------

def last_linear(model: nn.Module) -> str:
    """The name of the model's last registered nn.Linear (the classifier DFR refits)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise GerneError(
            "method.name: dfr refits the model's last nn.Linear layer, but this model has none; "
            "use a model.arch whose classifier is a linear layer (mlp, cnn, resnet18, resnet50, bert)"
        )
    return names[-1]


@torch.no_grad()
def last_layer_inputs(model: nn.Module, dataset: GroupedDataset, rows: np.ndarray,
                      device: torch.device) -> np.ndarray:
    """The inputs (n, d) of the model's last nn.Linear for the given rows, in eval mode, as float64."""
    layer = model.get_submodule(last_linear(model))
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    try:
        chunks = [rows[i : i + FEATURE_BATCH] for i in range(0, len(rows), FEATURE_BATCH)]
        for x in dataset.batches(chunks):
            model(x.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    features = torch.cat([c.float().cpu() for c in captured]).double().numpy()
    if features.ndim != 2 or len(features) != len(rows):
        raise GerneError(
            f"method.name: dfr needs one feature vector per sample at the model's last nn.Linear, but got "
            f"shape {tuple(features.shape)} for {len(rows)} samples; use a model whose last linear layer "
            "is its classifier"
        )
    return features


def with_head(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    """A copy of the model whose last nn.Linear has the given weight (K, d) and bias (K,)."""
    name = last_linear(model)
    old = model.get_submodule(name)
    if tuple(weight.shape) != (old.out_features, old.in_features):
        raise GerneError(
            f"method.name: dfr's head has shape {tuple(weight.shape)} but the model's last nn.Linear "
            f"{name!r} is ({old.out_features}, {old.in_features}); its outputs must be the classes"
        )
    new = nn.Linear(old.in_features, old.out_features, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(torch.as_tensor(weight))
        new.bias.copy_(torch.as_tensor(bias))
    out = copy.deepcopy(model)
    parent, _, attr = name.rpartition(".")
    setattr(out.get_submodule(parent) if parent else out, attr, new)
    return out


class DFR(Method):
    """ERM training; evaluation through the last layer refitted on group-balanced validation halves."""

    name = "dfr"
    Params = DFRParams
    summary = "DFR: ERM features, last layer refitted (L1 logistic regression) on half of validation"
    needs_val_attributes = True
    search_params = {"C": SearchRange(*C_RANGE, log=True)}  # the range of the authors' grid

    @classmethod
    def prepare_dataset(cls, params: DFRParams, dataset: GroupedDataset) -> GroupedDataset:
        """Half of each validation group moved to the split DFR_TRAIN, the head's training data."""
        return halve_validation(dataset, params.seed)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of the batch (ERM)."""
        return {"loss": weighted_loss(self.models["model"], batch.x, batch.y).loss}

    def eval_model(self, model: nn.Module, dataset: GroupedDataset) -> nn.Module:
        """A copy of the model with its last layer refitted on the DFR training half."""
        rows = dataset.indices(DFR_TRAIN)
        if len(rows) == 0:
            raise GerneError(
                "method.name: dfr found no validation rows to fit the last layer on; the dataset must go "
                "through DFR.prepare_dataset (gerne_ray.training.prepare does this)"
            )
        p = self.params
        features = last_layer_inputs(model, dataset, rows, self.ctx.device)
        y, a = dataset.y[rows], dataset.a[rows]
        subsets = balanced_subsets(y * dataset.num_attributes + a, p.num_retrains,
                                   np.random.default_rng([p.seed, 1]))
        weight, bias = fit_head(features, y, subsets, dataset.num_classes, p.C, p.seed)
        return with_head(model, weight, bias)

