"""Colored digits: scikit-learn's 8x8 handwritten digits coloured by the LfF protocol.

This module also holds the LfF attribute assignment (`assign_attributes`) that every offline
generator shares: it decides, per class, which samples carry the bias-aligned attribute a = y and
which carry a conflicting one, exactly rather than by sampling.

Rounding, everywhere in this module: a real count x becomes `floor(x + 0.5)` (round half up),
never Python's round-half-even.

Split (stratified, seeded): within each class of n images, floor(0.6 n + 0.5) go to train,
floor(0.2 n + 0.5) to val and the rest to test. With the bundled 1797 digits that is 1078 train,
359 val, 360 test (per class: see `split_sizes`).

Colours: the 10 attribute colours are `PALETTE` below (RGB in [0, 1]): the seven non-black corners
of the RGB cube plus orange, violet and spring green; no colour is a multiple of another, and any
two differ by at least 0.5 in Euclidean distance. Each image's foreground (intensity / 16, in
[0, 1]) is multiplied by its colour plus Gaussian jitter (std `jitter`, one draw per sample and
channel) and clipped to [0, 1].
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.errors import GerneError

NAME = "colored_digits"
NUM_CLASSES = 10
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test; test takes the remainder after rounding

PALETTE = np.array(
    [
        [1.0, 0.0, 0.0],  # 0 red
        [0.0, 1.0, 0.0],  # 1 green
        [0.0, 0.0, 1.0],  # 2 blue
        [1.0, 1.0, 0.0],  # 3 yellow
        [1.0, 0.0, 1.0],  # 4 magenta
        [0.0, 1.0, 1.0],  # 5 cyan
        [1.0, 1.0, 1.0],  # 6 white
        [1.0, 0.5, 0.0],  # 7 orange
        [0.5, 0.0, 1.0],  # 8 violet
        [0.0, 1.0, 0.5],  # 9 spring green
    ],
    dtype=np.float32,
)
PALETTE.flags.writeable = False


def round_half_up(x: float) -> int:
    """Round a non-negative real count to the nearest integer, halves going up."""
    return int(math.floor(x + 0.5))


def check_conflict_ratio(conflict_ratio: float) -> float:
    """Return the conflict ratio as a float, or raise GerneError if it is not in [0, 1)."""
    try:
        r = float(conflict_ratio)
    except (TypeError, ValueError):
        raise GerneError(
            f"data.conflict_ratio must be a number in [0, 1), got {conflict_ratio!r};"
            " e.g. 0.02 for 2% bias-conflicting training samples"
        ) from None
    if not 0.0 <= r < 1.0:  # also rejects NaN
        raise GerneError(
            f"data.conflict_ratio must be in [0, 1), got {conflict_ratio!r};"
            " e.g. 0.02 for 2% bias-conflicting training samples"
        )
    return r


def _blocks(n: int, m: int) -> list[int]:
    """Sizes of m consecutive blocks covering n items as evenly as possible, larger ones first."""
    return [n // m + (1 if j < n % m else 0) for j in range(m)]


def assign_attributes(
    y: np.ndarray,
    split: np.ndarray,
    num_attributes: int,
    conflict_ratio: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Attribute labels by the LfF protocol: exact aligned share 1 - r in train, uniform in val/test.

    Attribute y is the bias-aligned one for class y. Training split, per class y with n_y samples:
    n_conflict = floor(r * n_y + 0.5) samples get a conflicting attribute, the other
    n_y - n_conflict get a = y. The conflicting ones are spread over the A - 1 other attributes in
    blocks, attribute (y + 1) mod A first, then (y + 2) mod A, ...; when n_conflict is not a
    multiple of A - 1 the first blocks get one more. Val and test, per class: A blocks of equal
    size (differing by at most 1), attribute y first, then (y + 1) mod A, ...; the first blocks get
    the extra ones. Which samples fall in which block is a seeded permutation within the class.
    The random draws (one permutation per split and class) do not depend on r.
    """
    r = check_conflict_ratio(conflict_ratio)
    y = np.asarray(y, dtype=np.int64)
    split = np.asarray(split)
    if num_attributes < 2:
        raise ValueError(f"num_attributes must be at least 2, got {num_attributes}")
    if len(y) and (y.min() < 0 or y.max() >= num_attributes):
        raise ValueError("the aligned attribute of class y is y, so y must lie in [0, A)")
    if not np.isin(split, (TRAIN, VAL, TEST)).all():
        raise ValueError("split codes must be 0/1/2 (train/val/test)")

    a = np.empty_like(y)
    for code in (TRAIN, VAL, TEST):
        in_split = split == code
        for cls in np.unique(y[in_split]):
            rows = np.flatnonzero(in_split & (y == cls))
            rows = rows[rng.permutation(len(rows))]
            n = len(rows)
            if code == TRAIN:
                n_conflict = round_half_up(r * n)
                counts = [n - n_conflict, *_blocks(n_conflict, num_attributes - 1)]
            else:
                counts = _blocks(n, num_attributes)
            offsets = np.repeat(np.arange(num_attributes), counts)
            a[rows] = (cls + offsets) % num_attributes
    return a


def stratified_split(
    y: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Split codes (int8) assigning, per class, round-half-up shares of train and val, rest test."""
    y = np.asarray(y)
    split = np.empty(len(y), dtype=np.int8)
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rows = rows[rng.permutation(len(rows))]
        n_train = round_half_up(fractions[0] * len(rows))
        n_val = round_half_up(fractions[1] * len(rows))
        split[rows[:n_train]] = TRAIN
        split[rows[n_train : n_train + n_val]] = VAL
        split[rows[n_train + n_val :]] = TEST
    return split


def split_sizes(n: int) -> tuple[int, int, int]:
    """Train, val and test sizes of a class with n samples under the documented rounding."""
    n_train = round_half_up(SPLIT_FRACTIONS[0] * n)
    n_val = round_half_up(SPLIT_FRACTIONS[1] * n)
    return n_train, n_val, n - n_train - n_val


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as read-only arrays: intensities (N, 8, 8) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    target = bunch.target.astype(np.int64)
    images.flags.writeable = False
    target.flags.writeable = False
    return images, target


def load_colored_digits(
    conflict_ratio: float = 0.02, seed: int = 0, jitter: float = 0.05
) -> GroupedDataset:
    """Load the 8x8 digits coloured by the LfF protocol: K = A = 10, inputs (N, 3, 8, 8)."""
    r = check_conflict_ratio(conflict_ratio)
    jitter = float(jitter)
    if not (math.isfinite(jitter) and jitter >= 0.0):
        raise GerneError(f"data.jitter must be a finite number >= 0, got {jitter!r}; e.g. 0.05")
    images, y = _digits()
    split_rng, attribute_rng, jitter_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    split = stratified_split(y, SPLIT_FRACTIONS, split_rng)
    a = assign_attributes(y, split, NUM_CLASSES, r, attribute_rng)
    colours = PALETTE[a] + jitter_rng.normal(0.0, jitter, size=(len(y), 3)).astype(np.float32)
    inputs = np.clip(images[:, None, :, :] * colours[:, :, None, None], 0.0, 1.0)
    return GroupedDataset(
        name=NAME,
        inputs=torch.from_numpy(inputs.astype(np.float32)),
        y=y.copy(),
        a=a,
        split=split,
        ids=np.arange(len(y), dtype=np.int64),
        num_classes=NUM_CLASSES,
        num_attributes=NUM_CLASSES,
    )
