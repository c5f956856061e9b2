"""Metrics from one per-group table, against hand-computed numbers."""

import math

import numpy as np
import pytest

from gerne_ray.metrics import METRIC_NAMES, group_table, metrics_from_table


def _samples(groups: dict[tuple[int, int], tuple[int, int]]):
    """Expand {(y, a): (n, correct)} into per-sample y, a, pred (wrong predictions are (y + 1) % 2)."""
    y, a, pred = [], [], []
    for (gy, ga), (n, correct) in groups.items():
        y += [gy] * n
        a += [ga] * n
        pred += [gy] * correct + [(gy + 1) % 2] * (n - correct)
    return np.array(y), np.array(a), np.array(pred)


# A 2 x 2 evaluation split: group accuracies 0.9, 0.5, 0.25, 0.8.
EVAL = {(0, 0): (10, 9), (0, 1): (4, 2), (1, 0): (4, 1), (1, 1): (10, 8)}
TRAIN_COUNTS = np.array([[90, 10], [5, 95]])
ALIGNED = np.array([[True, False], [False, True]])


def test_group_table_counts():
    table = group_table(*_samples(EVAL), 2, 2)
    assert table.rows() == [
        {"y": 0, "a": 0, "n": 10, "correct": 9, "accuracy": 0.9},
        {"y": 0, "a": 1, "n": 4, "correct": 2, "accuracy": 0.5},
        {"y": 1, "a": 0, "n": 4, "correct": 1, "accuracy": 0.25},
        {"y": 1, "a": 1, "n": 10, "correct": 8, "accuracy": 0.8},
    ]
    assert table.missing == []


def test_metrics_on_a_hand_computed_table():
    m = metrics_from_table(group_table(*_samples(EVAL), 2, 2), TRAIN_COUNTS, ALIGNED)
    assert set(m) == set(METRIC_NAMES)
    assert m["gba"] == pytest.approx((0.9 + 0.5 + 0.25 + 0.8) / 4)
    assert m["wga"] == pytest.approx(0.25)
    assert m["avg"] == pytest.approx(20 / 28)
    # train shares 90, 10, 5, 95 out of 200
    assert m["weighted_avg"] == pytest.approx((90 * 0.9 + 10 * 0.5 + 5 * 0.25 + 95 * 0.8) / 200)
    # class 0: 11/14, class 1: 9/14
    assert m["class_balanced"] == pytest.approx((11 / 14 + 9 / 14) / 2)
    assert m["worst_class"] == pytest.approx(9 / 14)
    # conflicting groups (0, 1) and (1, 0): 3 correct of 8
    assert m["minority"] == pytest.approx(3 / 8)


def test_a_group_absent_from_the_split_is_skipped_and_listed():
    partial = {k: v for k, v in EVAL.items() if k != (1, 0)}
    table = group_table(*_samples(partial), 2, 2)
    assert table.missing == [(1, 0)]
    m = metrics_from_table(table, TRAIN_COUNTS, ALIGNED)
    assert m["gba"] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert m["wga"] == pytest.approx(0.5)
    assert m["worst_class"] == pytest.approx(min(11 / 14, 8 / 10))
    assert m["minority"] == pytest.approx(2 / 4)
    assert m["weighted_avg"] == pytest.approx((90 * 0.9 + 10 * 0.5 + 95 * 0.8) / 195)


def test_no_conflicting_samples_gives_nan_minority():
    only_aligned = {(0, 0): (3, 3), (1, 1): (2, 1)}
    m = metrics_from_table(group_table(*_samples(only_aligned), 2, 2), TRAIN_COUNTS, ALIGNED)
    assert math.isnan(m["minority"])
    assert m["gba"] == pytest.approx((1.0 + 0.5) / 2)


def test_evaluation_uses_wilds_overlapping_groups_when_the_dataset_has_identities():
    """CivilComments: val/test WGA is the worst of WILDS's (identity, y) groups, not of the (y, a) table."""
    import torch

    from gerne_ray.data.base import GroupedDataset
    from gerne_ray.data.civilcomments import IDENTITIES, wilds_worst_group_accuracy
    from gerne_ray.groups import GroupStats
    from gerne_ray.loop import WorkerContext, evaluate

    rng = np.random.default_rng(0)
    n = 60
    x = torch.tensor(rng.normal(size=(n, 1)), dtype=torch.float32)
    y = rng.integers(0, 2, n)
    identities = rng.random((n, len(IDENTITIES))) < 0.3
    a = identities.any(axis=1).astype(np.int64)
    ds = GroupedDataset("cc", x, y, a, np.full(n, 2, dtype=np.int8), np.arange(n), 2, 2)
    ds.identities, ds.identity_names = identities, IDENTITIES
    model = torch.nn.Linear(1, 2)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[-1.0], [1.0]])
        model.bias.zero_()
    pred = (x[:, 0] > 0).long().numpy()
    stats = GroupStats(np.array([[10, 5], [5, 10]]))
    values, table = evaluate(model, ds, 2, (stats.counts, stats.aligned), WorkerContext(), 16)
    assert values["wga"] == pytest.approx(wilds_worst_group_accuracy(y, pred, identities))
    assert values["wga"] != pytest.approx(min(table.accuracy))  # the (y, a) table would say otherwise
