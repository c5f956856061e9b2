"""The Pareto front of a multi-metric search, and the rule that picks one trial from it.

A trial is a point: its validation metrics at its selected epoch (the epoch best by the first
metric), every metric maximised. Trial p dominates trial q when p is at least as good on every
metric and strictly better on one. The front is every trial no other trial dominates: two trials
with the same values dominate neither each other, so both stay on the front (or both leave it,
when a third dominates them). `select` then takes one trial of the front by `search.select`:
the largest `maximize` among the trials meeting every floor of `subject_to`, ties going to the
other metrics in order, then to the earliest trial. Pure Python; no Ray, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """Whether p is at least q on every metric and above it on one (all maximised)."""
    return all(a >= b for a, b in zip(p, q, strict=True)) and any(a > b for a, b in zip(p, q, strict=True))


def front(points: Sequence[Sequence[float]]) -> list[int]:
    """The indices, ascending, of the points no other point dominates."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def usable(trial: Mapping, metrics: Sequence[str]) -> bool:
    """Whether a trial has a finite value of every metric (a trial that failed, or diverged before its
    first evaluation, is no point of the plane)."""
    return all(isinstance(trial.get(m), int | float) and math.isfinite(trial[m]) for m in metrics)


def front_trials(trials: Sequence[Mapping], metrics: Sequence[str]) -> list[Mapping]:
    """The trials on the Pareto front of metrics, in their order; trials without a finite value of every
    metric are left out."""
    points = [t for t in trials if usable(t, metrics)]
    return [points[i] for i in front([[t[m] for m in metrics] for t in points])]


@dataclass(frozen=True)
class Selection:
    """The trial `select` picked, whether it meets every floor, and what to tell the user when not."""

    trial: Mapping
    met: bool
    note: str


def select(candidates: Sequence[Mapping], metrics: Sequence[str], maximize: str | None = None,
           floors: Mapping[str, float] | None = None) -> Selection:
    """The candidate with the largest `maximize` (default: the first metric) among those with every
    floor's metric >= its value; ties: the other metrics in order, then the earliest candidate.

    When no candidate meets the floors, the one with the smallest summed shortfall below them (ties
    as above), with a note naming the floors and how far it falls short.
    """
    if not candidates:
        raise ValueError("select: no candidate trial")
    maximize = maximize or metrics[0]
    floors = dict(floors or {})
    order = [maximize, *(m for m in metrics if m != maximize)]

    def rank(pair: tuple[int, Mapping]) -> tuple:
        i, t = pair
        return (*(t[m] for m in order), -i)

    def shortfall(t: Mapping) -> float:
        return sum(max(0.0, floor - t[m]) for m, floor in floors.items())

    indexed = list(enumerate(candidates))
    meeting = [(i, t) for i, t in indexed if shortfall(t) == 0]
    if meeting:
        return Selection(max(meeting, key=rank)[1], True, "")
    closest = min(shortfall(t) for _, t in indexed)
    i, chosen = max(((i, t) for i, t in indexed if shortfall(t) == closest), key=rank)
    wanted = ", ".join(f"{m} >= {floor:.4g}" for m, floor in floors.items())
    highest = ", ".join(f"{m} {max(t[m] for t in candidates):.4g}" for m in floors)
    name = chosen.get("trial_id", f"#{i}")
    note = (f"no trial of the Pareto front meets {wanted} (the highest: {highest}); took the closest, "
            f"{name}, short by {closest:.4g} in all: lower search.select.subject_to or search longer")
    return Selection(chosen, False, note)


__all__ = ["dominates", "front", "front_trials", "select", "Selection", "usable"]
