"""The two class-balanced batches of GERNE, drawn per data-parallel rank (method doc, section 2).

Per class y each step draws B samples in all ("optim.batch_size_per_class"), split over the W
workers by ``rank_share``; rank r draws its share per class from its own random stream, seeded by
``np.random.SeedSequence([seed, rank])``. Draws are with replacement.

- Biased batch: uniform over X_y, so attribute a appears with probability alpha_ya.
- Less-biased batch, per slot: with probability 1 - c uniform over X_y, else one of the A_y
  non-empty groups of class y uniformly, then uniform within it. So
  p_lb(a|y) = (1 - c) alpha_ya + c / A_y, and an empty group is never drawn.
- Weighted batch (JTT's upsampled training set): `share` x K rows, classes ignored, row i with
  probability w_i / sum(w).

Indices are positions into the ``y``/``a`` arrays given at construction, grouped by class
(class 0's slots first); order within a batch carries no meaning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gerne_ray.errors import GerneError
from gerne_ray.groups import GroupStats, check_c

__all__ = ["PairedSampler", "rank_share"]

_STATE_VERSION = 1


def _check_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GerneError(f"{field} must be an integer, got {value!r}.")
    return int(value)


def rank_share(batch_size_per_class: int, rank: int, world_size: int) -> int:
    """Samples per class that data-parallel rank `rank` of `world_size` draws per batch."""
    b = _check_int(batch_size_per_class, "optim.batch_size_per_class")
    w = _check_int(world_size, "scaling.num_workers")
    r = _check_int(rank, "rank")
    if w < 1:
        raise GerneError(f"scaling.num_workers must be >= 1, got {w}.")
    if not 0 <= r < w:
        raise GerneError(f"rank {r} is outside 0..{w - 1} for scaling.num_workers = {w}.")
    if b < 1:
        raise GerneError(f"optim.batch_size_per_class must be >= 1, got {b}.")
    if b < w:
        raise GerneError(
            f"optim.batch_size_per_class = {b} is smaller than scaling.num_workers = {w}, so some "
            "worker would draw nothing; raise optim.batch_size_per_class to at least "
            f"{w} or lower scaling.num_workers to at most {b}."
        )
    return b // w + (1 if r < b % w else 0)


class PairedSampler:
    """Draws the biased and less-biased batches of GERNE, class-balanced, seeded and rank-aware."""

    def __init__(
        self,
        y: np.ndarray,
        a: np.ndarray,
        num_classes: int,
        num_attributes: int,
        batch_size_per_class: int,
        c: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_c(c)
        self.share: int = rank_share(batch_size_per_class, rank, world_size)
        seed = _check_int(seed, "seed")
        if seed < 0:
            raise GerneError(f"seed must be a non-negative integer, got {seed}.")
        # Validates the labels and raises, naming the class, if a class has no samples.
        self.stats: GroupStats = GroupStats.from_labels(y, a, num_classes, num_attributes)
        self.c = float(c)
        self.seed = seed
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.batch_size_per_class = int(batch_size_per_class)

        yy = np.asarray(y).astype(np.int64)
        aa = np.asarray(a).astype(np.int64)
        k, n_attr = self.stats.K, self.stats.A
        # Sample positions sorted by (y, a): each class and each group is a contiguous slice.
        self._order = np.lexsort((aa, yy)).astype(np.int64)
        group_n = self.stats.counts.ravel()
        group_start = np.concatenate([[0], np.cumsum(group_n)[:-1]]).astype(np.int64)
        self._class_n = self.stats.class_counts.astype(np.int64)
        self._class_start = group_start[np.arange(k) * n_attr]
        # Non-empty groups, class-major, and where each class's run of them starts.
        nonempty = np.flatnonzero(group_n > 0)
        self._ne_group_n = group_n[nonempty].astype(np.int64)
        self._ne_group_start = group_start[nonempty]
        self._ne_per_class = self.stats.groups_per_class.astype(np.int64)
        self._ne_class_start = np.concatenate([[0], np.cumsum(self._ne_per_class)[:-1]]).astype(
            np.int64
        )
        # Per-slot constants for one batch: slot s belongs to class slot_class[s].
        self._slot_class = np.repeat(np.arange(k, dtype=np.int64), self.share)
        self._slot_class_n = self._class_n[self._slot_class]
        self._slot_class_start = self._class_start[self._slot_class]
        self._slot_ne_n = self._ne_per_class[self._slot_class]
        self._slot_ne_start = self._ne_class_start[self._slot_class]

        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, self.rank])))

    def _uniform_in_class(self) -> np.ndarray:
        return self._slot_class_start + self._rng.integers(0, self._slot_class_n)

    def biased(self) -> np.ndarray:
        """Indices of this rank's biased batch: `share` per class, uniform within each class."""
        return self._order[self._uniform_in_class()]

    def less_biased(self) -> np.ndarray:
        """Indices of this rank's less-biased batch: `share` per class, p_lb(a|y) in expectation."""
        rng = self._rng
        n = self._slot_class.size
        balanced = rng.random(n) < self.c
        j = self._slot_ne_start + rng.integers(0, self._slot_ne_n)
        pos_group = self._ne_group_start[j] + rng.integers(0, self._ne_group_n[j])
        pos_class = self._uniform_in_class()
        return self._order[np.where(balanced, pos_group, pos_class)]

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """Indices of this rank's weighted batch: `share` x K rows, row i with probability w_i / sum(w)."""
        w = np.asarray(weights, dtype=np.float64)
        n = self._order.size
        if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
            raise GerneError(
                f"sampler weights must be {n} finite non-negative numbers (one per training row) with a "
                f"positive sum; got shape {w.shape}"
            )
        cdf = np.cumsum(w)
        cdf /= cdf[-1]  # ends at exactly 1.0, so every draw u in [0, 1) lands on a row of positive weight
        return np.searchsorted(cdf, self._rng.random(self._slot_class.size), side="right").astype(np.int64)

    def state_dict(self) -> dict:
        """The random stream's position as a JSON-serialisable dict."""
        st = self._rng.bit_generator.state
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "rank": self.rank,
            "bit_generator": st["bit_generator"],
            # 128-bit integers as strings so any JSON reader keeps them exact.
            "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume the random stream saved by state_dict (same seed and rank required)."""
        try:
            version = int(state["version"])
            name = str(state["bit_generator"])
            seed, rank = int(state["seed"]), int(state["rank"])
            raw = {
                "bit_generator": name,
                "state": {"state": int(state["state"]), "inc": int(state["inc"])},
                "has_uint32": int(state["has_uint32"]),
                "uinteger": int(state["uinteger"]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise GerneError(
                f"sampler state is malformed ({exc!r}); "
                "pass a dict made by PairedSampler.state_dict()."
            ) from exc
        if version != _STATE_VERSION or name != "PCG64":
            raise GerneError(
                f"sampler state has version {version} / generator {name}, expected "
                f"{_STATE_VERSION} / PCG64; resume from a checkpoint written by this version."
            )
        if seed != self.seed or rank != self.rank:
            raise GerneError(
                f"sampler state belongs to seed {seed}, rank {rank}, but this sampler has seed "
                f"{self.seed}, rank {self.rank}; resume with the same seed and load each rank's "
                "own state."
            )
        self._rng.bit_generator.state = raw
