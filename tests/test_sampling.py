"""Tests of the paired, class-balanced, rank-aware sampler (docs/gerne-method.md, section 2).

Statistical tolerance used throughout: with a fixed seed, every observed frequency f of an event
with target probability p over n independent draws must satisfy |f - p| < 5 * sqrt(p (1 - p) / n)
(five standard errors; a false alarm per check has probability about 6e-7). Probabilities that
are exactly 0 or 1 are checked exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gerne_ray.errors import GerneError
from gerne_ray.groups import GroupStats, p_lb
from gerne_ray.sampling import PairedSampler, rank_share

# Class 0: 50 / 8 / 4 (a small group of 4); class 1: 3 / 60 / 12; class 2: 20 / 20 / (empty).
COUNTS = np.array([[50, 8, 4], [3, 60, 12], [20, 20, 0]])
K, A = COUNTS.shape
SE_LIMIT = 5.0


def make_labels(counts: np.ndarray = COUNTS, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample labels with the given group counts, in shuffled order."""
    y = np.repeat(np.repeat(np.arange(counts.shape[0]), counts.shape[1]), counts.ravel())
    a = np.repeat(np.tile(np.arange(counts.shape[1]), counts.shape[0]), counts.ravel())
    perm = np.random.default_rng(seed).permutation(y.size)
    return y[perm], a[perm]


Y, ATTR = make_labels()


def samplers(c: float, batch: int, world: int, seed: int = 7) -> list[PairedSampler]:
    return [
        PairedSampler(Y, ATTR, K, A, batch, c, seed, rank=r, world_size=world) for r in range(world)
    ]


def assert_close(observed: np.ndarray, n: np.ndarray | int, target: np.ndarray) -> None:
    """observed counts out of n draws match target probabilities within SE_LIMIT std errors."""
    observed = np.asarray(observed, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), target.shape)
    freq = observed / n
    exact = (target == 0.0) | (target == 1.0)
    np.testing.assert_array_equal(freq[exact], target[exact])
    se = np.sqrt(target * (1.0 - target) / n)
    z = np.abs(freq - target)[~exact] / se[~exact]
    assert np.all(z < SE_LIMIT), f"max z = {z.max():.2f}; freq {freq}, target {target}"


def class_counts_per_row(idx: np.ndarray) -> np.ndarray:
    """For a (steps, slots) array of indices, the number of samples of each class per row."""
    return (Y[idx][:, :, None] == np.arange(K)).sum(axis=1)


def pooled_group_counts(
    ranks: list[PairedSampler], steps: int, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pool one step's draws over all ranks; check B per class per step; count groups/samples."""
    out = []
    for draw in (PairedSampler.biased, PairedSampler.less_biased):
        per_rank = [np.stack([draw(s) for _ in range(steps)]) for s in ranks]
        for s, idx in zip(ranks, per_rank, strict=True):
            assert idx.dtype == np.int64
            assert np.all(class_counts_per_row(idx) == s.share)
        pooled = np.concatenate(per_rank, axis=1)  # row t: the union of step t over ranks
        assert np.all(class_counts_per_row(pooled) == batch)
        groups = np.zeros((K, A), dtype=np.int64)
        np.add.at(groups, (Y[pooled], ATTR[pooled]), 1)
        out.append((groups, np.bincount(pooled.ravel(), minlength=Y.size)))
    (groups_b, samples_b), (groups_lb, samples_lb) = out
    return groups_b, groups_lb, samples_b, samples_lb


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("c", [0.25, 0.5, 1.0])
def test_group_frequencies_match_alpha_and_p_lb(c: float, world: int) -> None:
    """Pooled over ranks: B per class per step exactly; attribute shares alpha and p_lb (5 SE)."""
    batch, steps = 7, 1200
    ranks = samplers(c, batch, world)
    assert sum(s.share for s in ranks) == batch
    groups_b, groups_lb, _, _ = pooled_group_counts(ranks, steps, batch)
    stats = GroupStats(COUNTS)
    n_per_class = np.full((K, 1), steps * batch)
    assert_close(groups_b, n_per_class, stats.alpha)
    assert_close(groups_lb, n_per_class, p_lb(stats, c))
    # The empty group (2, 2) is never drawn.
    assert groups_b[2, 2] == 0 and groups_lb[2, 2] == 0


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_every_sample_drawn_with_its_exact_probability(c: float) -> None:
    """Per sample of class y in group g: P = 1/n_y (biased) and (1-c)/n_y + c/(A_y m_g) (5 SE).

    This includes uniformity within a group: the 4 members of the small group (0, 2) are each
    drawn with the same probability.
    """
    batch, steps = 9, 1500
    _, _, samples_b, samples_lb = pooled_group_counts(samplers(c, batch, 2, seed=11), steps, batch)
    stats = GroupStats(COUNTS)
    n_y = stats.class_counts[Y]
    m_g = stats.counts[Y, ATTR]
    a_y = stats.groups_per_class[Y]
    draws_per_class = steps * batch
    assert_close(samples_b, draws_per_class, 1.0 / n_y)
    assert_close(samples_lb, draws_per_class, (1.0 - c) / n_y + c / (a_y * m_g))
    small = (Y == 0) & (ATTR == 2)
    assert small.sum() == 4 and np.all(samples_lb[small] > 0)
    # Within the small group, each member gets a quarter of the group's draws.
    assert_close(samples_lb[small], samples_lb[small].sum(), np.full(4, 0.25))
    assert_close(samples_b[small], samples_b[small].sum(), np.full(4, 0.25))


def test_empty_groups_are_never_drawn_and_single_group_class_works() -> None:
    counts = np.array([[30, 0, 5], [0, 0, 9], [4, 4, 4]])
    y, a = make_labels(counts, seed=3)
    sampler = PairedSampler(y, a, 3, 3, batch_size_per_class=5, c=1.0, seed=0)
    seen = np.zeros((3, 3), dtype=np.int64)
    for _ in range(400):
        for idx in (sampler.biased(), sampler.less_biased()):
            np.add.at(seen, (y[idx], a[idx]), 1)
    np.testing.assert_array_equal(seen > 0, counts > 0)
    # c = 1: class 0 splits evenly over its two non-empty groups in the less-biased batch.
    lb = np.concatenate([sampler.less_biased() for _ in range(400)])
    cls0 = a[lb][y[lb] == 0]
    assert_close(np.array([(cls0 == 0).sum()]), cls0.size, np.array([0.5]))


# ---------------------------------------------------------------- seeds, ranks, resuming


def draw_sequence(sampler: PairedSampler, steps: int) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([sampler.biased(), sampler.less_biased()]) for _ in range(steps)]
    )


def test_ranks_draw_independent_streams() -> None:
    r0, r1 = samplers(0.5, 8, 2)
    s0, s1 = draw_sequence(r0, 20), draw_sequence(r1, 20)
    assert s0.shape == s1.shape == (20 * 2 * K * 4,)
    assert not np.array_equal(s0, s1)
    # Not a shifted copy either: the two streams agree only about as often as chance allows.
    assert np.mean(s0 == s1) < 0.2


def test_same_seed_reproduces_and_different_seed_differs() -> None:
    a1 = PairedSampler(Y, ATTR, K, A, 6, 0.5, seed=42)
    a2 = PairedSampler(Y, ATTR, K, A, 6, 0.5, seed=42)
    b = PairedSampler(Y, ATTR, K, A, 6, 0.5, seed=43)
    s1, s2, s3 = draw_sequence(a1, 10), draw_sequence(a2, 10), draw_sequence(b, 10)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, s3)
    # Rank r of world W is seeded by (seed, rank) only: same draws as rank r of another world
    # with the same share.
    w2 = PairedSampler(Y, ATTR, K, A, 6, 0.5, seed=42, rank=1, world_size=2)
    w3 = PairedSampler(Y, ATTR, K, A, 9, 0.5, seed=42, rank=1, world_size=3)
    assert w2.share == w3.share == 3
    np.testing.assert_array_equal(draw_sequence(w2, 5), draw_sequence(w3, 5))


def test_state_dict_resumes_the_exact_sequence() -> None:
    sampler = PairedSampler(Y, ATTR, K, A, 5, 0.25, seed=9, rank=1, world_size=2)
    draw_sequence(sampler, 7)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = draw_sequence(sampler, 7)

    fresh = PairedSampler(Y, ATTR, K, A, 5, 0.25, seed=9, rank=1, world_size=2)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(draw_sequence(fresh, 7), expected)
    # Loading again rewinds an already advanced sampler.
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(draw_sequence(fresh, 7), expected)


def test_load_state_dict_rejects_other_rank_and_malformed_state() -> None:
    r0, r1 = samplers(0.5, 4, 2)
    with pytest.raises(GerneError, match="rank"):
        r1.load_state_dict(r0.state_dict())
    bad = r0.state_dict()
    del bad["inc"]
    with pytest.raises(GerneError, match="malformed"):
        r0.load_state_dict(bad)


# ---------------------------------------------------------------- rank_share and errors


def test_rank_share_sums_to_batch_and_is_balanced() -> None:
    for batch in range(1, 25):
        for world in range(1, batch + 1):
            shares = [rank_share(batch, r, world) for r in range(world)]
            assert sum(shares) == batch
            assert max(shares) - min(shares) <= 1
            assert shares == sorted(shares, reverse=True)
    assert [rank_share(7, r, 3) for r in range(3)] == [3, 2, 2]


def test_rank_share_errors() -> None:
    with pytest.raises(GerneError, match=r"optim\.batch_size_per_class.*scaling\.num_workers"):
        rank_share(3, 0, 4)
    with pytest.raises(GerneError, match=r"optim\.batch_size_per_class"):
        rank_share(0, 0, 1)
    with pytest.raises(GerneError, match=r"rank"):
        rank_share(4, 4, 4)
    with pytest.raises(GerneError, match=r"scaling\.num_workers"):
        PairedSampler(Y, ATTR, K, A, 2, 0.5, seed=0, rank=0, world_size=3)


def test_sampler_errors() -> None:
    y, a = make_labels(np.array([[3, 1], [0, 0], [2, 2]]))
    with pytest.raises(GerneError, match=r"class y=1 has no training samples"):
        PairedSampler(y, a, 3, 2, 4, 0.5, seed=0)
    for bad_c in (0.0, 1.5, -1.0):
        with pytest.raises(GerneError, match=r"method\.c"):
            PairedSampler(Y, ATTR, K, A, 4, bad_c, seed=0)
    with pytest.raises(GerneError, match="seed"):
        PairedSampler(Y, ATTR, K, A, 4, 0.5, seed=-1)
