"""Group statistics of a training split and the GERNE formulas built on them.

Notation follows docs/gerne-method.md sections 1-4. The paper assumes every group (y, a) is
non-empty; here an empty group is allowed and A_y, the number of non-empty groups of class y,
replaces A everywhere (p_lb, p_ext, the bounds). Empty groups get probability 0. A class with
A_y = 1 has alpha = 1 = 1/A_y and adds no constraint on beta.

Where a quantity is a ratio of group counts it is computed from integers, so that e.g. whether a
group is balanced (alpha == 1/A_y) is decided exactly, not up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gerne_ray.errors import GerneError

__all__ = [
    "GroupStats",
    "beta_of",
    "check_beta",
    "check_c",
    "exact_bounds",
    "lambda_max",
    "lambda_of",
    "p_ext",
    "p_lb",
    "reweight_weights",
    "simplified_bounds",
]

_BETA_TOL = 1e-12


def _as_int_labels(values: Any, name: str, upper: int, field: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise GerneError(
            f"{name} labels must be a 1-D array, got shape {arr.shape}; pass one label per sample."
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise GerneError(
                f"{name} labels must be integers, got dtype {arr.dtype}; "
                f"encode them as 0..{upper - 1}."
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)][0]
        raise GerneError(
            f"{name} label {int(bad)} is outside 0..{upper - 1} ({field} = {upper}); "
            f"fix the labels or set {field} to the number of distinct values."
        )
    return arr


@dataclass(frozen=True, eq=False)
class GroupStats:
    """Training-split counts per group (y, a) and the shares alpha derived from them."""

    counts: np.ndarray

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 2 or counts.shape[0] < 1 or counts.shape[1] < 1:
            raise GerneError(
                f"group counts must be a (K, A) table with K, A >= 1, got shape {counts.shape}."
            )
        if counts.size and not np.issubdtype(counts.dtype, np.integer):
            if not (np.all(np.isfinite(counts)) and np.all(counts == np.round(counts))):
                raise GerneError("group counts must be whole numbers; pass integer counts.")
        counts = counts.astype(np.int64)
        if np.any(counts < 0):
            raise GerneError("group counts must be non-negative; pass the number of samples.")
        per_class = counts.sum(axis=1)
        for y in np.flatnonzero(per_class == 0):
            raise GerneError(
                f"class y={int(y)} has no training samples; every class needs at least one "
                "sample: fix the labels (or data.num_classes) or add samples of that class."
            )
        counts = counts.copy()
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_labels(cls, y: Any, a: Any, num_classes: int, num_attributes: int) -> GroupStats:
        """Count training samples per group (y, a) from per-sample labels."""
        if int(num_classes) < 1:
            raise GerneError(f"data.num_classes must be >= 1, got {num_classes}.")
        if int(num_attributes) < 1:
            raise GerneError(f"data.num_attributes must be >= 1, got {num_attributes}.")
        k, n_attr = int(num_classes), int(num_attributes)
        yy = _as_int_labels(y, "class (y)", k, "data.num_classes")
        aa = _as_int_labels(a, "attribute (a)", n_attr, "data.num_attributes")
        if yy.shape != aa.shape:
            raise GerneError(
                f"got {yy.size} class labels but {aa.size} attribute labels; "
                "pass one (y, a) pair per sample."
            )
        counts = np.bincount(yy * n_attr + aa, minlength=k * n_attr).reshape(k, n_attr)
        return cls(counts=counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupStats):
            return NotImplemented
        return self.counts.shape == other.counts.shape and bool(
            np.array_equal(self.counts, other.counts)
        )

    def __hash__(self) -> int:
        return hash((self.counts.shape, self.counts.tobytes()))

    @property
    def K(self) -> int:
        """Number of classes."""
        return int(self.counts.shape[0])

    @property
    def A(self) -> int:
        """Number of attribute values."""
        return int(self.counts.shape[1])

    @property
    def class_counts(self) -> np.ndarray:
        """Samples per class, shape (K,)."""
        return self.counts.sum(axis=1)

    @property
    def alpha(self) -> np.ndarray:
        """Share alpha_ya of class y carrying attribute a, shape (K, A); 0 on empty groups."""
        return self.counts / self.class_counts[:, None]

    @property
    def present(self) -> np.ndarray:
        """Which groups are non-empty, shape (K, A)."""
        return self.counts > 0

    @property
    def groups_per_class(self) -> np.ndarray:
        """A_y, the number of non-empty groups of each class, shape (K,)."""
        return self.present.sum(axis=1)

    def empty_groups(self) -> list[tuple[int, int]]:
        """The (y, a) pairs with no training samples."""
        return [(int(y), int(a)) for y, a in zip(*np.nonzero(self.counts == 0), strict=True)]

    @property
    def aligned(self) -> np.ndarray:
        """The bias-aligned group(s) of each class (largest alpha; ties all count), (K, A)."""
        return self.counts == self.counts.max(axis=1, keepdims=True)

    def to_rows(self) -> list[dict]:
        """One dict per group (y, a), empty ones included, with keys y, a, count, alpha."""
        alpha = self.alpha
        return [
            {"y": y, "a": a, "count": int(self.counts[y, a]), "alpha": float(alpha[y, a])}
            for y in range(self.K)
            for a in range(self.A)
        ]


def _check_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GerneError(f"{field} must be a number, got {value!r}.")
    out = float(value)
    if math.isnan(out):
        raise GerneError(f"{field} must be a number, got NaN.")
    return out


def check_c(c: float, field: str = "method.c") -> None:
    """Raise GerneError unless 0 < c <= 1."""
    val = _check_number(c, field)
    if not 0.0 < val <= 1.0:
        raise GerneError(
            f"{field} = {c!r} is outside (0, 1]; pick c with 0 < c <= 1 "
            "(c = 1 makes the less-biased batch group-balanced)."
        )


def lambda_of(beta: float, c: float) -> float:
    """lambda = c * (beta + 1), the only combination of c and beta the expected loss sees."""
    return c * (beta + 1.0)


def beta_of(lam: float, c: float) -> float:
    """beta = lambda / c - 1, the inverse of lambda_of."""
    return lam / c - 1.0


def _balanced_target(stats: GroupStats) -> np.ndarray:
    """1/A_y on non-empty groups, 0 on empty ones, shape (K, A)."""
    return np.where(stats.present, 1.0 / stats.groups_per_class[:, None], 0.0)


def p_lb(stats: GroupStats, c: float) -> np.ndarray:
    """p_lb(a|y) = (1 - c) alpha + c / A_y of the less-biased batch, (K, A); 0 on empty groups."""
    check_c(c)
    return np.where(stats.present, (1.0 - c) * stats.alpha + c * _balanced_target(stats), 0.0)


def p_ext(stats: GroupStats, c: float, beta: float) -> np.ndarray:
    """p_ext(a|y) = alpha + c (beta + 1)(1/A_y - alpha), (K, A); 0 on empty groups."""
    check_c(c)
    lam = lambda_of(float(beta), float(c))
    alpha = stats.alpha
    return np.where(stats.present, alpha + lam * (_balanced_target(stats) - alpha), 0.0)


def _lambda_crossings(stats: GroupStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, lambda where p_ext hits 0 and 1, and a mask of groups that constrain lambda.

    With n = |X_y|, m = |X_{y,a}| and A = A_y: p_ext = 0 at lambda = m A / (m A - n) and p_ext = 1
    at lambda = A (n - m) / (n - m A). Groups with m A == n (alpha == 1/A_y) or m == 0 never bind.
    """
    m = stats.counts.astype(np.float64)
    n = stats.class_counts.astype(np.float64)[:, None]
    a_y = stats.groups_per_class.astype(np.float64)[:, None]
    mi = stats.counts * stats.groups_per_class[:, None]  # exact integer m * A_y
    binds = stats.present & (mi != stats.class_counts[:, None])
    den = np.where(binds, m * a_y - n, 1.0)
    lam0 = np.where(binds, m * a_y / den, np.nan)
    lam1 = np.where(binds, a_y * (n - m) / -den, np.nan)
    return lam0, lam1, binds


def lambda_max(stats: GroupStats) -> float:
    """Largest lambda = c (beta + 1) keeping every p_ext >= 0; +inf if no group is over-weighted."""
    lam0, _, binds = _lambda_crossings(stats)
    majority = binds & (
        stats.counts * stats.groups_per_class[:, None] > stats.class_counts[:, None]
    )
    if not majority.any():
        return math.inf
    return float(lam0[majority].min())


def simplified_bounds(stats: GroupStats, c: float) -> tuple[float, float]:
    """The paper's experimental bounds (-1, beta_max) with beta_max = lambda_max / c - 1."""
    check_c(c)
    return -1.0, beta_of(lambda_max(stats), float(c))


def exact_bounds(stats: GroupStats, c: float) -> tuple[float, float]:
    """The interval of beta keeping every p_ext in [0, 1]; (-inf, inf) if nothing constrains it."""
    check_c(c)
    lam0, lam1, binds = _lambda_crossings(stats)
    if not binds.any():
        return -math.inf, math.inf
    with np.errstate(over="ignore"):  # a tiny c puts a bound beyond float range: it is then +-inf, exactly
        i1 = lam0[binds] / c - 1.0
        i2 = lam1[binds] / c - 1.0
    return float(np.minimum(i1, i2).max()), float(np.maximum(i1, i2).min())


def check_beta(stats: GroupStats, c: float, beta: float, field: str = "method.beta") -> None:
    """Raise GerneError if beta lies outside the exact bounds for these groups and this c."""
    val = _check_number(beta, field)
    check_c(c)
    lo, hi = exact_bounds(stats, c)
    tol_lo = _BETA_TOL * max(1.0, abs(lo)) if math.isfinite(lo) else 0.0
    tol_hi = _BETA_TOL * max(1.0, abs(hi)) if math.isfinite(hi) else 0.0
    if math.isinf(val) or val < lo - tol_lo or val > hi + tol_hi:
        raise GerneError(
            f"{field} = {beta!r} is outside its bounds [{lo:.6g}, {hi:.6g}] for method.c = {c:g} "
            "and these training group counts (outside them some group gets a negative weight); "
            f"pick a {field} inside the bounds, e.g. in [-1, {hi:.6g}) and away from the upper end."
        )


def reweight_weights(stats: GroupStats, c: float, beta: float) -> np.ndarray:
    """Per-sample loss weight p_ext / alpha of each group for the 'reweight' method; 0 if empty."""
    target = p_ext(stats, c, beta)
    alpha = stats.alpha
    safe = np.where(stats.present, alpha, 1.0)
    return np.where(stats.present, target / safe, 0.0)
