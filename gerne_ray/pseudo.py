"""Unknown attributes: pseudo-groups from a biased model (gerne-method.md section 5).

`data.attributes: unknown` makes training read no attribute label. `data.attribute_labels` says
which true labels exist at all: `train_val` (train and validation: the pseudo-groups' precision
and recall are reported), `val_only` (validation only: model selection by validation WGA) or
`none` (model selection by validation worst-class accuracy). `mask` replaces every label the
setting calls unknown by 0 before anything else sees the dataset, so no code path can read them.

The biased model and its ranking of the training samples come from the first stage
(gerne_ray.stage1, once per job). A trial with threshold t puts the floor(t |X_y|) least confident
samples of each class y into pseudo-group 1, the rest into 0; beta's bounds come from those
pseudo-group counts. This module is the pure part: no training, no files.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from gerne_ray import groups
from gerne_ray.data.base import TRAIN, VAL, GroupedDataset


@dataclass
class Ranking:
    """Stage 2's result over the training split (in the order of its rows): rank within class."""

    y: np.ndarray  # class of each training row
    rank: np.ndarray  # 0 = least confident in its own label, within its class
    confidence: np.ndarray

    @property
    def class_sizes(self) -> np.ndarray:
        """|X_y| for every class y."""
        return np.bincount(self.y, minlength=int(self.y.max()) + 1)


def mask(dataset: GroupedDataset, attribute_labels: str) -> GroupedDataset:
    """A copy whose attribute labels the setting calls unknown are 0: train's always, val's with `none`."""
    a = dataset.a.copy()
    a[dataset.split == TRAIN] = 0
    if attribute_labels == "none":
        a[dataset.split == VAL] = 0
    out = copy.copy(dataset)
    out.a = a
    return out


def pseudo_attributes(ranking: Ranking, t: float) -> np.ndarray:
    """Pseudo-group of every training row: 1 for the floor(t |X_y|) least confident of each class."""
    cut = np.floor(t * ranking.class_sizes + 1e-9).astype(np.int64)
    return (ranking.rank < cut[ranking.y]).astype(np.int64)


def pseudo_stats(ranking: Ranking, t: float, num_attributes: int) -> groups.GroupStats:
    """The pseudo-groups' training counts (K x num_attributes, columns 0 and 1 used)."""
    return groups.GroupStats.from_labels(ranking.y, pseudo_attributes(ranking, t),
                                         len(ranking.class_sizes), num_attributes)


def min_threshold(ranking: Ranking) -> float:
    """The smallest t that puts at least one sample of every class into pseudo-group 1."""
    return float(1.0 / ranking.class_sizes.min())


def with_pseudo_groups(dataset: GroupedDataset, ranking: Ranking, t: float) -> GroupedDataset:
    """The (masked) dataset with its training rows' attributes set to their pseudo-group for t."""
    a = dataset.a.copy()
    a[dataset.split == TRAIN] = pseudo_attributes(ranking, t)
    out = copy.copy(dataset)
    out.a, out.num_attributes = a, max(dataset.num_attributes, 2)
    return out


def precision_recall(dataset: GroupedDataset, ranking: Ranking, t: float) -> dict[str, float]:
    """How well pseudo-group 1 finds the bias-conflicting training samples (true labels: reporting only).

    A training sample is bias-conflicting when its true group is not its class's largest group.
    """
    train = dataset.split == TRAIN
    y, a = dataset.y[train], dataset.a[train]
    counts = groups.GroupStats.from_labels(y, a, dataset.num_classes, dataset.num_attributes).counts
    conflicting = a != counts.argmax(axis=1)[y]
    found = pseudo_attributes(ranking, t).astype(bool)
    hits = int((found & conflicting).sum())
    return {
        "pseudo_precision": hits / int(found.sum()) if found.any() else math.nan,
        "pseudo_recall": hits / int(conflicting.sum()) if conflicting.any() else math.nan,
        "pseudo_minority_size": int(found.sum()),
        "true_minority_size": int(conflicting.sum()),
    }


def rank_within_class(y: np.ndarray, confidence: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0 for the least confident sample of each class, then upwards (ties broken by id)."""
    order = np.lexsort((ids, confidence, y))
    rank = np.empty(len(y), dtype=np.int64)
    starts = np.searchsorted(y[order], y[order], side="left")
    rank[order] = np.arange(len(y)) - starts
    return rank
