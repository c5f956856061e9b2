"""Exact tests of the group statistics and the GERNE formulas (docs/gerne-method.md, 1-4)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gerne_ray.errors import GerneError
from gerne_ray.groups import (
    GroupStats,
    beta_of,
    check_beta,
    check_c,
    exact_bounds,
    lambda_max,
    lambda_of,
    p_ext,
    p_lb,
    reweight_weights,
    simplified_bounds,
)

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@st.composite
def count_tables(draw: st.DrawFn) -> np.ndarray:
    """Random (K, A) count tables, often with empty groups, every class non-empty."""
    k = draw(st.integers(1, 4))
    n_attr = draw(st.integers(1, 5))
    cell = st.one_of(st.just(0), st.integers(1, 5), st.integers(1, 500))
    rows = []
    for _ in range(k):
        row = draw(st.lists(cell, min_size=n_attr, max_size=n_attr))
        if sum(row) == 0:
            row[draw(st.integers(0, n_attr - 1))] = draw(st.integers(1, 500))
        rows.append(row)
    return np.array(rows, dtype=np.int64)


c_values = st.one_of(st.just(1.0), st.floats(min_value=1e-3, max_value=1.0))


def colored_mnist_counts(per_minority: int = 1, aligned: int = 1791) -> np.ndarray:
    """K = A = 10, aligned colour a = y with alpha = 0.995, the nine others equal."""
    counts = np.full((10, 10), per_minority, dtype=np.int64)
    np.fill_diagonal(counts, aligned)
    return counts


def reference_lambda_interval(counts: np.ndarray) -> tuple[Fraction | None, Fraction | None]:
    """Exact interval of lambda keeping every p_ext in [0, 1], solved per group (None = inf)."""
    lo: Fraction | None = None
    hi: Fraction | None = None
    for row in counts:
        n = int(row.sum())
        a_y = int((row > 0).sum())
        for m in row:
            m = int(m)
            if m == 0:
                continue
            alpha = Fraction(m, n)
            d = Fraction(1, a_y) - alpha
            if d == 0:
                continue
            # p = alpha + lam * d in [0, 1]  <=>  lam between -alpha/d and (1-alpha)/d.
            ends = sorted([-alpha / d, (1 - alpha) / d])
            lo = ends[0] if lo is None else max(lo, ends[0])
            hi = ends[1] if hi is None else min(hi, ends[1])
    return lo, hi


def feasible(counts: np.ndarray, c: float, beta: float) -> bool:
    """Independent float check that every p_ext(a|y) lies in [0, 1]."""
    lam = c * (beta + 1.0)
    alpha = counts / counts.sum(axis=1, keepdims=True)
    a_y = (counts > 0).sum(axis=1, keepdims=True)
    p = (alpha + lam * (1.0 / a_y - alpha))[counts > 0]
    return bool(np.all((p >= 0.0) & (p <= 1.0)))


def bisect_edge(counts: np.ndarray, c: float, direction: float) -> float:
    """Walk from beta = -1 (always feasible) in `direction` and bisect the feasibility edge."""
    inside = -1.0
    step = 1.0
    outside = None
    while step < 1e15:
        probe = -1.0 + direction * step
        if not feasible(counts, c, probe):
            outside = probe
            break
        inside = probe
        step *= 2.0
    if outside is None:
        return direction * math.inf
    for _ in range(200):
        mid = 0.5 * (inside + outside)
        if mid in (inside, outside):
            break
        if feasible(counts, c, mid):
            inside = mid
        else:
            outside = mid
    return inside


# ---------------------------------------------------------------- paper's worked numbers


def test_colored_mnist_simplified_beta_max_matches_paper() -> None:
    stats = GroupStats(colored_mnist_counts())
    assert stats.alpha.max() == pytest.approx(0.995, abs=1e-15)
    assert np.all(stats.groups_per_class == 10)

    lo, hi = simplified_bounds(stats, 0.5)
    assert lo == -1.0
    assert abs(hi - 1.2235) < 1e-4
    assert hi == pytest.approx(0.995 / (0.5 * (0.995 - 0.1)) - 1, rel=1e-12)

    _, hi1 = simplified_bounds(stats, 1.0)
    assert abs(hi1 - 0.112) < 1e-3
    assert hi1 == pytest.approx(0.995 / (0.995 - 0.1) - 1, rel=1e-12)
    # lambda_max does not depend on c.
    assert lambda_max(stats) == pytest.approx(lambda_of(hi, 0.5), rel=1e-12)
    assert lambda_max(stats) == pytest.approx(lambda_of(hi1, 1.0), rel=1e-12)


def test_colored_mnist_uneven_minorities_only_alpha_max_matters() -> None:
    # 1990 aligned + 10 spread unevenly over nine colours: alpha_max = 0.995 still.
    counts = colored_mnist_counts(per_minority=1, aligned=1990)
    counts[:, :] = np.where(np.eye(10, dtype=bool), 1990, 1)
    counts[np.arange(10), (np.arange(10) + 1) % 10] = 2
    stats = GroupStats(counts)
    assert np.all(stats.class_counts == 2000)
    assert simplified_bounds(stats, 0.5)[1] == pytest.approx(
        simplified_bounds(GroupStats(colored_mnist_counts()), 0.5)[1], rel=1e-12
    )


# ---------------------------------------------------------------- exact bounds, brute force


@PROPERTY
@given(count_tables(), c_values)
def test_exact_bounds_match_exact_rational_solution(counts: np.ndarray, c: float) -> None:
    stats = GroupStats(counts)
    lo, hi = exact_bounds(stats, c)
    ref_lo, ref_hi = reference_lambda_interval(counts)
    fc = Fraction(c)
    if ref_lo is None:
        assert (lo, hi) == (-math.inf, math.inf)
        return
    assert lo == pytest.approx(float(ref_lo / fc - 1), rel=1e-12, abs=1e-12)
    assert hi == pytest.approx(float(ref_hi / fc - 1), rel=1e-12, abs=1e-12)


@PROPERTY
@given(count_tables(), c_values)
def test_exact_bounds_match_bisection_and_p_ext_stays_in_unit_interval(
    counts: np.ndarray, c: float
) -> None:
    stats = GroupStats(counts)
    lo, hi = exact_bounds(stats, c)
    assert lo <= -1.0 <= hi

    # Brute force: bisect the edge of {beta : all p_ext in [0, 1]} with an independent check.
    for bound, direction in ((lo, -1.0), (hi, 1.0)):
        edge = bisect_edge(counts, c, direction)
        if math.isinf(bound):
            assert edge == bound
        else:
            assert edge == pytest.approx(bound, rel=1e-9, abs=1e-9)

    # Inside the bounds (ends included) the library's p_ext is a distribution on each class.
    finite_lo = lo if math.isfinite(lo) else -1e6
    finite_hi = hi if math.isfinite(hi) else 1e6
    for beta in np.linspace(finite_lo, finite_hi, 17):
        p = p_ext(stats, c, float(beta))
        assert p.min() >= -1e-12 and p.max() <= 1 + 1e-12
        check_beta(stats, c, float(beta))

    # Just outside, some p_ext leaves [0, 1] and check_beta refuses.
    for bound, sign in ((lo, -1.0), (hi, 1.0)):
        if math.isinf(bound):
            continue
        beta = bound + sign * 1e-6 * max(1.0, abs(bound))
        p = p_ext(stats, c, beta)
        assert p.min() < 0.0 or p.max() > 1.0
        with pytest.raises(GerneError, match="method.beta"):
            check_beta(stats, c, beta)


@PROPERTY
@given(count_tables(), c_values)
def test_simplified_upper_equals_exact_upper_and_minus_one_is_inside(
    counts: np.ndarray, c: float
) -> None:
    stats = GroupStats(counts)
    s_lo, s_hi = simplified_bounds(stats, c)
    e_lo, e_hi = exact_bounds(stats, c)
    assert s_lo == -1.0
    if math.isinf(e_hi):
        assert math.isinf(s_hi) and s_hi > 0
    else:
        assert s_hi == pytest.approx(e_hi, rel=1e-12, abs=1e-12)
    assert e_lo <= -1.0
    # With any imbalanced group there is a minority group, whose p_ext = 0 bound is below -1.
    # Without one, nothing constrains beta at all.
    balanced = stats.counts * stats.groups_per_class[:, None] == stats.class_counts[:, None]
    imbalanced = bool(np.any(stats.present & ~balanced))
    assert math.isfinite(e_lo) == imbalanced == math.isfinite(e_hi)
    if imbalanced:
        assert e_lo < -1.0 < e_hi


# ---------------------------------------------------------------- special cases and identities


@PROPERTY
@given(count_tables(), c_values, st.floats(min_value=-1.0, max_value=1.0))
def test_special_cases_and_row_sums(counts: np.ndarray, c: float, t: float) -> None:
    stats = GroupStats(counts)
    alpha = stats.alpha
    # beta = -1: class-balanced ERM, p_ext == alpha exactly.
    np.testing.assert_array_equal(p_ext(stats, c, -1.0), alpha)
    # c (beta + 1) = 1: the group-balanced objective, 1/A_y on non-empty groups.
    balanced = p_ext(stats, c, beta_of(1.0, c))
    target = np.where(stats.present, 1.0 / stats.groups_per_class[:, None], 0.0)
    np.testing.assert_allclose(balanced, target, rtol=0, atol=1e-12)
    # Rows of p_lb and p_ext sum to 1 (any beta); empty groups get 0.
    lo, hi = exact_bounds(stats, c)
    beta = -1.0 + t * (min(hi, 50.0) + 1.0) if t >= 0 else -1.0 - t * (max(lo, -50.0) + 1.0)
    for p in (p_lb(stats, c), p_ext(stats, c, beta)):
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-9)
        assert np.all(p[~stats.present] == 0.0)
    # p_lb is the c-mixture of alpha and the balanced target, in [0, 1].
    np.testing.assert_allclose(p_lb(stats, c), (1 - c) * alpha + c * target, atol=1e-15)
    # reweight: weights w = p_ext / alpha reproduce p_ext under uniform-in-class sampling.
    w = reweight_weights(stats, c, beta)
    np.testing.assert_allclose(alpha * w, p_ext(stats, c, beta), rtol=1e-12, atol=1e-12)
    assert np.all(w[~stats.present] == 0.0)


def test_resampling_special_case_c1_beta0_is_group_balanced() -> None:
    stats = GroupStats(colored_mnist_counts())
    np.testing.assert_allclose(p_ext(stats, 1.0, 0.0), np.full((10, 10), 0.1), atol=1e-15)
    np.testing.assert_allclose(p_lb(stats, 1.0), np.full((10, 10), 0.1), atol=1e-15)
    np.testing.assert_allclose(reweight_weights(stats, 1.0, -1.0), np.ones((10, 10)), atol=1e-15)


def test_lambda_beta_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = float(rng.uniform(1e-3, 1.0))
        beta = float(rng.uniform(-5.0, 50.0))
        lam = float(rng.uniform(0.0, 10.0))
        assert beta_of(lambda_of(beta, c), c) == pytest.approx(beta, rel=1e-12, abs=1e-12)
        assert lambda_of(beta_of(lam, c), c) == pytest.approx(lam, rel=1e-12, abs=1e-12)
    assert lambda_of(0.0, 1.0) == 1.0
    assert lambda_of(-1.0, 0.3) == 0.0
    assert beta_of(1.0, 0.5) == 1.0


# ---------------------------------------------------------------- empty groups, by hand


def test_empty_groups_use_groups_per_class_hand_worked() -> None:
    # class 0: 5, 3, (empty) -> A_0 = 2; class 1: balanced over 3; class 2: one group only.
    counts = np.array([[5, 3, 0], [2, 2, 2], [0, 0, 7]])
    stats = GroupStats(counts)
    assert stats.K == 3 and stats.A == 3
    np.testing.assert_array_equal(stats.class_counts, [8, 6, 7])
    np.testing.assert_array_equal(stats.groups_per_class, [2, 3, 1])
    assert stats.empty_groups() == [(0, 2), (2, 0), (2, 1)]
    np.testing.assert_array_equal(
        stats.aligned, [[True, False, False], [True, True, True], [False, False, True]]
    )
    np.testing.assert_allclose(
        stats.alpha, [[5 / 8, 3 / 8, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]], atol=1e-15
    )

    # p_lb with c = 0.5: class 0 -> 0.5 * 5/8 + 0.5/2 = 0.5625 and 0.4375 (A_0 = 2, not 3).
    np.testing.assert_allclose(
        p_lb(stats, 0.5), [[0.5625, 0.4375, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]], atol=1e-15
    )
    # lambda = c (beta + 1) = 1: class 0 balanced over its two non-empty groups.
    np.testing.assert_allclose(
        p_ext(stats, 0.5, 1.0), [[0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]], atol=1e-15
    )
    # lambda = 2: class 0 -> 5/8 + 2 (1/2 - 5/8) = 3/8 and 5/8.
    np.testing.assert_allclose(p_ext(stats, 1.0, 1.0)[0], [3 / 8, 5 / 8, 0], atol=1e-15)

    # Only group (0, 0) (majority) and (0, 1) (minority) bind. p_ext(0,0) = 0 at
    # lambda = alpha / (alpha - 1/2) = (5/8) / (1/8) = 5; p_ext(0,1) = 0 at lambda = -3.
    assert lambda_max(stats) == pytest.approx(5.0, rel=1e-15)
    assert exact_bounds(stats, 0.5) == pytest.approx((-3 / 0.5 - 1, 5 / 0.5 - 1), rel=1e-15)
    assert exact_bounds(stats, 1.0) == pytest.approx((-4.0, 4.0), rel=1e-15)
    assert simplified_bounds(stats, 0.5) == pytest.approx((-1.0, 9.0), rel=1e-15)
    # With the naive A = 3 the bound would be (5/8) / (5/8 - 1/3) = 15/7 instead.
    assert lambda_max(stats) != pytest.approx(15 / 7)

    w = reweight_weights(stats, 0.5, 1.0)
    np.testing.assert_allclose(w, [[0.8, 4 / 3, 0], [1, 1, 1], [0, 0, 1]], atol=1e-15)

    rows = stats.to_rows()
    assert len(rows) == 9
    assert rows[2] == {"y": 0, "a": 2, "count": 0, "alpha": 0.0}
    assert rows[0] == {"y": 0, "a": 0, "count": 5, "alpha": 0.625}
    assert all(set(r) == {"y", "a", "count", "alpha"} for r in rows)


def test_balanced_or_single_group_classes_give_unbounded_beta() -> None:
    stats = GroupStats(np.array([[4, 4], [0, 9]]))
    assert lambda_max(stats) == math.inf
    assert exact_bounds(stats, 0.5) == (-math.inf, math.inf)
    assert simplified_bounds(stats, 0.5) == (-1.0, math.inf)
    check_beta(stats, 0.5, 1e9)


def test_aligned_ties_mark_every_largest_group() -> None:
    stats = GroupStats(np.array([[3, 3, 1], [0, 1, 2]]))
    np.testing.assert_array_equal(stats.aligned, [[True, True, False], [False, False, True]])


# ---------------------------------------------------------------- construction and errors


def test_from_labels_counts_groups() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    a = np.array([1, 1, 0, 2, 2, 0, 2])
    stats = GroupStats.from_labels(y, a, num_classes=2, num_attributes=3)
    np.testing.assert_array_equal(stats.counts, [[1, 2, 0], [1, 0, 3]])
    assert stats.counts.dtype == np.int64
    assert stats == GroupStats(np.array([[1, 2, 0], [1, 0, 3]]))
    assert hash(stats) == hash(GroupStats(np.array([[1, 2, 0], [1, 0, 3]])))
    with pytest.raises(ValueError):
        stats.counts[0, 0] = 5  # read-only


def test_from_labels_empty_class_names_the_class() -> None:
    y = np.array([0, 0, 2, 2])
    a = np.array([0, 1, 0, 1])
    with pytest.raises(GerneError, match=r"class y=1 has no training samples"):
        GroupStats.from_labels(y, a, num_classes=3, num_attributes=2)
    with pytest.raises(GerneError, match=r"class y=3"):
        GroupStats(np.array([[1, 1], [2, 0], [1, 0], [0, 0]]))


def test_from_labels_rejects_bad_labels() -> None:
    with pytest.raises(GerneError, match="data.num_classes"):
        GroupStats.from_labels([0, 5], [0, 0], num_classes=2, num_attributes=1)
    with pytest.raises(GerneError, match="data.num_attributes"):
        GroupStats.from_labels([0, 1], [0, -1], num_classes=2, num_attributes=2)
    with pytest.raises(GerneError, match="one"):
        GroupStats.from_labels([0, 1], [0], num_classes=2, num_attributes=2)
    with pytest.raises(GerneError, match="integers"):
        GroupStats.from_labels([0.5, 1], [0, 0], num_classes=2, num_attributes=2)
    with pytest.raises(GerneError, match="non-negative"):
        GroupStats(np.array([[1, -1]]))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0000001, 2, float("nan"), "0.5", None, True])
def test_check_c_rejects_with_field_name(bad: object) -> None:
    with pytest.raises(GerneError, match=r"method\.c"):
        check_c(bad)  # type: ignore[arg-type]
    with pytest.raises(GerneError, match=r"search\.c_choice"):
        check_c(bad, field="search.c_choice")  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [1, 1.0, 0.5, 1e-9, np.float32(0.25)])
def test_check_c_accepts(good: float) -> None:
    check_c(good)


def test_check_beta_message_names_field_and_bounds() -> None:
    stats = GroupStats(colored_mnist_counts())
    lo, hi = exact_bounds(stats, 0.5)
    check_beta(stats, 0.5, hi)  # the bound itself is allowed
    check_beta(stats, 0.5, lo)
    check_beta(stats, 0.5, hi * (1 + 1e-13))  # within the 1e-12 tolerance
    with pytest.raises(GerneError) as info:
        check_beta(stats, 0.5, 1.3)
    msg = str(info.value)
    assert "method.beta" in msg and "1.22346" in msg and "-1.01117" in msg and "inside" in msg
    with pytest.raises(GerneError, match=r"search\.beta"):
        check_beta(stats, 0.5, -2.0, field="search.beta")
    with pytest.raises(GerneError, match=r"method\.beta"):
        check_beta(stats, 0.5, float("nan"))
    with pytest.raises(GerneError, match=r"method\.c"):
        check_beta(stats, 1.5, 0.0)
