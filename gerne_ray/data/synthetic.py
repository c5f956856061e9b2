"""Synthetic tabular data with a weak core feature and a strong spurious one, for offline runs.

Layout of the `dim` features (see CORE_DIMS, SPURIOUS_DIMS):
- dims 0-1, core: the class mean, K points evenly spaced on a circle, plus noise of std 1. The
  circle's radius puts adjacent class means 2 * CORE_HALF_GAP apart, so a linear model gets about
  Phi(CORE_HALF_GAP) = 82% from them alone for K = 2 and about 65-70% for K >= 3.
- dims 2-3, spurious: the attribute mean, A points on a circle with adjacent means
  2 * SPURIOUS_HALF_GAP apart, plus noise of std SPURIOUS_NOISE: linearly separable but for a
  negligible share.
- dims 4.., pure noise of std 1.
Classes are balanced within each split (counts differ by at most 1); attributes follow the LfF
rule of `gerne_ray.data.colored_digits.assign_attributes` (A = K, aligned attribute a = y). Rows
are ordered train, val, test; ids = row index. For a fixed seed only the attributes and the
spurious dims change with conflict_ratio.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.data.colored_digits import assign_attributes, check_conflict_ratio
from gerne_ray.errors import GerneError

NAME = "synthetic"
CORE_DIMS = (0, 1)
SPURIOUS_DIMS = (2, 3)
MIN_DIM = 4
CORE_HALF_GAP = 0.9  # half the distance between adjacent class means, in core-noise stds
SPURIOUS_HALF_GAP = 1.0  # half the distance between adjacent attribute means
SPURIOUS_NOISE = 0.15  # std of the spurious dims' noise


def _check_int(value: object, field: str, minimum: int, hint: str) -> int:
    """Return value as an int, or raise GerneError naming data.<field> if it is not >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise GerneError(f"data.{field} must be an integer >= {minimum}, got {value!r}; {hint}")
    return int(value)


def _circle(labels: np.ndarray, count: int, half_gap: float) -> np.ndarray:
    """Points on a circle, one per label value, adjacent points 2 * half_gap apart: (N, 2)."""
    radius = half_gap / math.sin(math.pi / count)
    angle = 2.0 * math.pi * labels / count
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def load_synthetic(
    conflict_ratio: float = 0.02,
    seed: int = 0,
    num_classes: int = 2,
    n_train: int = 2000,
    n_val: int = 500,
    n_test: int = 1000,
    dim: int = 16,
) -> GroupedDataset:
    """Generate the synthetic core-versus-spurious dataset (K = A = num_classes, inputs (N, dim))."""
    r = check_conflict_ratio(conflict_ratio)
    k = _check_int(num_classes, "num_classes", 2, "e.g. 2")
    sizes = {
        name: _check_int(value, name, k, "every class needs at least one sample in every split")
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test))
    }
    d = _check_int(dim, "dim", MIN_DIM, "2 core dims and 2 spurious dims come first")

    split = np.concatenate(
        [
            np.full(sizes[name], code, dtype=np.int8)
            for name, code in (("n_train", TRAIN), ("n_val", VAL), ("n_test", TEST))
        ]
    )
    y = np.concatenate([np.arange(sizes[name]) % k for name in ("n_train", "n_val", "n_test")])
    y = y.astype(np.int64)
    n = len(y)

    attribute_rng, feature_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    a = assign_attributes(y, split, k, r, attribute_rng)

    x = feature_rng.normal(0.0, 1.0, size=(n, d))
    x[:, list(CORE_DIMS)] += _circle(y, k, CORE_HALF_GAP)
    x[:, list(SPURIOUS_DIMS)] *= SPURIOUS_NOISE
    x[:, list(SPURIOUS_DIMS)] += _circle(a, k, SPURIOUS_HALF_GAP)

    return GroupedDataset(
        name=NAME,
        inputs=torch.from_numpy(x.astype(np.float32)),
        y=y,
        a=a,
        split=split,
        ids=np.arange(n, dtype=np.int64),
        num_classes=k,
        num_attributes=k,
    )
