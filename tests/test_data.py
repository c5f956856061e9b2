"""Tests for the offline dataset loaders and the dataset registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from gerne_ray.data.base import TEST, TRAIN, VAL
from gerne_ray.data.colored_digits import PALETTE, load_colored_digits
from gerne_ray.data.registry import DATASETS, get_loader
from gerne_ray.data.synthetic import CORE_DIMS, SPURIOUS_DIMS, load_synthetic
from gerne_ray.errors import GerneError


def group_table(ds, split: int) -> np.ndarray:
    """Counts of (y, a) within one split, shape (K, A)."""
    rows = ds.split == split
    table = np.zeros((ds.num_classes, ds.num_attributes), dtype=np.int64)
    np.add.at(table, (ds.y[rows], ds.a[rows]), 1)
    return table


def expected_train_table(class_sizes: np.ndarray, r: float) -> np.ndarray:
    """The LfF training table computed from per-class sizes, independently of the loaders."""
    k = len(class_sizes)
    table = np.zeros((k, k), dtype=np.int64)
    for y, n_y in enumerate(class_sizes):
        n_conflict = math.floor(r * n_y + 0.5)
        table[y, y] = n_y - n_conflict
        for j in range(1, k):  # attribute (y + j) mod k takes the j-th block
            extra = 1 if j - 1 < n_conflict % (k - 1) else 0
            table[y, (y + j) % k] = n_conflict // (k - 1) + extra
    return table


def check_common(ds) -> None:
    """Types, shapes, ids and that the three splits partition the rows."""
    n = len(ds.y)
    assert ds.inputs.dtype == torch.float32 and ds.inputs.shape[0] == n
    assert ds.y.dtype == np.int64 and ds.a.dtype == np.int64 and ds.ids.dtype == np.int64
    assert ds.split.dtype == np.int8
    assert set(np.unique(ds.split)) == {TRAIN, VAL, TEST}
    assert sum(len(ds.indices(s)) for s in ("train", "val", "test")) == n
    assert np.array_equal(ds.ids, np.arange(n))
    assert ds.num_attributes == ds.num_classes


def check_uniform_eval(ds) -> None:
    """Val and test: within each class, attribute counts differ by at most 1."""
    for split in (VAL, TEST):
        table = group_table(ds, split)
        assert (table.max(axis=1) - table.min(axis=1) <= 1).all()


# --- colored digits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target


@pytest.mark.parametrize("r", [0.0, 0.02, 0.1, 0.5])
def test_colored_digits_group_counts(r):
    ds = load_colored_digits(conflict_ratio=r, seed=3)
    check_common(ds)
    train_sizes = np.bincount(ds.y[ds.split == TRAIN], minlength=10)
    assert np.array_equal(group_table(ds, TRAIN), expected_train_table(train_sizes, r))
    check_uniform_eval(ds)


def test_colored_digits_conflicting_share_and_empty_groups():
    ds = load_colored_digits(conflict_ratio=0.02)
    train = ds.split == TRAIN
    share = (ds.a[train] != ds.y[train]).mean()
    assert abs(share - 0.02) < 0.005
    # about two conflicting samples per class: most conflicting groups are empty at 2%
    assert (group_table(ds, TRAIN) == 0).sum() > 0
    assert (group_table(load_colored_digits(conflict_ratio=0.1), TRAIN) > 0).all()


def test_colored_digits_splits_stratified(digits):
    _, target = digits
    ds = load_colored_digits()
    assert len(ds.y) == len(target) and ds.input_shape == (3, 8, 8)
    assert np.array_equal(ds.y, target)  # ids are the sklearn row index
    for cls in range(10):
        n = int((target == cls).sum())
        n_train, n_val = math.floor(0.6 * n + 0.5), math.floor(0.2 * n + 0.5)
        got = [int(((ds.split == s) & (ds.y == cls)).sum()) for s in (TRAIN, VAL, TEST)]
        assert got == [n_train, n_val, n - n_train - n_val]


def test_colored_digits_seeded():
    first, again = load_colored_digits(seed=1), load_colored_digits(seed=1)
    assert torch.equal(first.inputs, again.inputs)
    assert np.array_equal(first.a, again.a) and np.array_equal(first.split, again.split)
    other = load_colored_digits(seed=2)
    assert not torch.equal(first.inputs, other.inputs)
    assert not np.array_equal(first.split, other.split)


def test_colored_digits_colour_protocol(digits):
    images, _ = digits
    ds = load_colored_digits(conflict_ratio=0.1, seed=0, jitter=0.05)
    intensity = images[ds.ids]
    x = ds.inputs.numpy()
    foreground = intensity > 0.5
    # per-sample mean colour over the foreground, undoing the intensity
    ratio = x / np.maximum(intensity, 1e-6)[:, None]
    pixels = foreground.sum(axis=(1, 2))[:, None]
    mean_colour = (ratio * foreground[:, None]).sum(axis=(2, 3)) / pixels
    distance = np.linalg.norm(mean_colour[:, None, :] - PALETTE[None], axis=2)
    assert (distance.argmin(axis=1) == ds.a).mean() > 0.99
    assert x.min() >= 0.0 and x.max() <= 1.0
    # background stays black; without jitter the foreground is exactly intensity * colour
    assert (x[np.broadcast_to(intensity[:, None] == 0, x.shape)] == 0).all()
    plain = load_colored_digits(conflict_ratio=0.1, seed=0, jitter=0.0)
    expected = intensity[:, None] * PALETTE[plain.a][:, :, None, None]
    np.testing.assert_allclose(plain.inputs.numpy(), expected, atol=1e-6)


# --- synthetic --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, r, sizes",
    [
        (2, 0.02, (2000, 500, 1000)),
        (2, 0.3, (999, 101, 57)),
        (3, 0.05, (1001, 300, 301)),
        (5, 0.1, (500, 103, 250)),
        (4, 0.0, (400, 40, 40)),
    ],
)
def test_synthetic_group_counts_and_splits(k, r, sizes):
    n_train, n_val, n_test = sizes
    ds = load_synthetic(
        conflict_ratio=r, seed=5, num_classes=k, n_train=n_train, n_val=n_val, n_test=n_test, dim=8
    )
    check_common(ds)
    assert ds.input_shape == (8,) and ds.num_classes == k
    for split, size in zip((TRAIN, VAL, TEST), sizes, strict=True):
        counts = np.bincount(ds.y[ds.split == split], minlength=k)
        assert counts.sum() == size and counts.max() - counts.min() <= 1
    train_sizes = np.bincount(ds.y[ds.split == TRAIN], minlength=k)
    assert np.array_equal(group_table(ds, TRAIN), expected_train_table(train_sizes, r))
    check_uniform_eval(ds)


def test_synthetic_seeded():
    first, again = load_synthetic(seed=4), load_synthetic(seed=4)
    assert torch.equal(first.inputs, again.inputs) and np.array_equal(first.a, again.a)
    assert not torch.equal(first.inputs, load_synthetic(seed=5).inputs)


@pytest.mark.parametrize("k", [2, 3])
def test_synthetic_spurious_strong_core_weak(k):
    ds = load_synthetic(conflict_ratio=0.02, seed=0, num_classes=k)
    x = ds.inputs.numpy()
    train, test = ds.split == TRAIN, ds.split == TEST
    spurious, core = list(SPURIOUS_DIMS), list(CORE_DIMS)

    def accuracy(dims, labels):
        model = LogisticRegression(max_iter=500).fit(x[train][:, dims], labels[train])
        return model.score(x[test][:, dims], labels[test])

    spurious_acc = accuracy(spurious, ds.a)  # test is attribute-uniform: a is not y there
    core_acc = accuracy(core, ds.y)
    assert spurious_acc > 0.98
    assert 1 / k + 0.15 < core_acc < spurious_acc - 0.1
    assert accuracy(core, ds.a) < 1 / k + 0.1  # the core dims carry no attribute signal
    assert accuracy(spurious, ds.y) < 1 / k + 0.1  # nor the spurious dims class signal


# --- errors and registry ----------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_synthetic, load_colored_digits])
@pytest.mark.parametrize("r", [-0.1, 1.0, 1.5, float("nan"), "lots"])
def test_conflict_ratio_out_of_range(loader, r):
    with pytest.raises(GerneError, match=r"data\.conflict_ratio"):
        loader(conflict_ratio=r)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_classes": 1}, "data.num_classes"),
        ({"n_val": 1}, "data.n_val"),
        ({"dim": 3}, "data.dim"),
        ({"n_train": 2.5}, "data.n_train"),
    ],
)
def test_synthetic_bad_arguments(kwargs, field):
    with pytest.raises(GerneError, match=field.replace(".", r"\.")):
        load_synthetic(**kwargs)


def test_colored_digits_bad_jitter():
    with pytest.raises(GerneError, match=r"data\.jitter"):
        load_colored_digits(jitter=-0.1)


def test_registry():
    assert get_loader("synthetic") is load_synthetic
    assert get_loader("colored_digits") is load_colored_digits
    assert {"synthetic", "colored_digits"} <= set(DATASETS)
    with pytest.raises(GerneError) as info:
        get_loader("mnist")
    message = str(info.value)
    assert "data.dataset" in message and "'mnist'" in message
    assert f"use one of: {', '.join(sorted(DATASETS))}" in message
