"""Per-group accuracy table and every metric derived from it.

Definitions (gerne-method.md section 6), all on one evaluation split:
- gba: group-balanced accuracy, the unweighted mean of per-group accuracies
  ("unbiased accuracy" in LfF/DFA, "adjusted accuracy" in SubpopBench).
- wga: worst-group accuracy, the minimum per-group accuracy.
- avg: average accuracy, correct / total over the split's samples.
- weighted_avg: per-group accuracies weighted by the TRAINING split's group shares
  (the Waterbirds literature's "average accuracy").
- class_balanced: the unweighted mean of per-class accuracies (samples pooled within a class).
- worst_class: the minimum per-class accuracy.
- minority: accuracy over the bias-conflicting samples pooled, i.e. the samples of every group
  that is not its class's largest training group (bFFHQ's "minority accuracy").
Groups absent from the split are left out of every metric and listed in `GroupTable.missing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRIC_NAMES = ("gba", "wga", "avg", "weighted_avg", "class_balanced", "worst_class", "minority")


@dataclass(frozen=True)
class GroupTable:
    """Per-group sample counts and correct predictions for the groups present in a split."""

    y: np.ndarray
    a: np.ndarray
    n: np.ndarray
    correct: np.ndarray
    missing: list[tuple[int, int]] = field(default_factory=list)

    @property
    def accuracy(self) -> np.ndarray:
        """Per-group accuracy, aligned with y and a."""
        return self.correct / self.n

    def rows(self) -> list[dict]:
        """One dict per present group: y, a, n, correct, accuracy."""
        return [
            {"y": int(y), "a": int(a), "n": int(n), "correct": int(c), "accuracy": float(c / n)}
            for y, a, n, c in zip(self.y, self.a, self.n, self.correct, strict=True)
        ]


def group_counts(
    y: np.ndarray, a: np.ndarray, pred: np.ndarray, num_classes: int, num_attributes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Samples and correct predictions per group, flat (K * A,) int64 arrays indexed y * A + a."""
    y, a, pred = (np.asarray(v, dtype=np.int64) for v in (y, a, pred))
    flat = y * num_attributes + a
    size = num_classes * num_attributes
    n = np.bincount(flat, minlength=size)
    correct = np.bincount(flat, weights=(pred == y), minlength=size).astype(np.int64)
    return n, correct


def table_from_counts(n: np.ndarray, correct: np.ndarray, num_attributes: int) -> GroupTable:
    """A GroupTable from flat per-group counts (as group_counts returns, or their sum over workers)."""
    n, correct = np.asarray(n, dtype=np.int64), np.asarray(correct, dtype=np.int64)
    present = n > 0
    gy, ga = np.divmod(np.arange(len(n)), num_attributes)
    missing = [(int(i), int(j)) for i, j in zip(gy[~present], ga[~present], strict=True)]
    return GroupTable(gy[present], ga[present], n[present], correct[present], missing)


def group_table(
    y: np.ndarray, a: np.ndarray, pred: np.ndarray, num_classes: int, num_attributes: int
) -> GroupTable:
    """Count samples and correct predictions per (y, a); groups with no samples go to `missing`."""
    return table_from_counts(*group_counts(y, a, pred, num_classes, num_attributes), num_attributes)


def _class_accuracies(table: GroupTable) -> np.ndarray:
    classes = np.unique(table.y)
    return np.array([table.correct[table.y == k].sum() / table.n[table.y == k].sum() for k in classes])


def metrics_from_table(
    table: GroupTable, train_counts: np.ndarray | None, aligned: np.ndarray | None
) -> dict[str, float]:
    """Every metric of METRIC_NAMES from one group table.

    train_counts: (K, A) training group counts (for weighted_avg); aligned: (K, A) bool, the
    bias-aligned groups (for minority); None when the training groups are unknown (both are then
    NaN). A metric with no samples to average is NaN.
    """
    acc = table.accuracy
    class_acc = _class_accuracies(table)
    known = train_counts is not None
    weights = (train_counts[table.y, table.a] if known else np.zeros(len(acc))).astype(np.float64)
    conflicting = ~aligned[table.y, table.a] if aligned is not None else np.zeros(len(acc), dtype=bool)
    n_conf = table.n[conflicting].sum()
    return {
        "gba": float(acc.mean()),
        "wga": float(acc.min()),
        "avg": float(table.correct.sum() / table.n.sum()),
        "weighted_avg": float((weights * acc).sum() / weights.sum()) if weights.sum() else float("nan"),
        "class_balanced": float(class_acc.mean()),
        "worst_class": float(class_acc.min()),
        "minority": float(table.correct[conflicting].sum() / n_conf) if n_conf else float("nan"),
    }
