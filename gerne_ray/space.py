"""The search space of a GERNE job, derived from the training data's group counts.

beta's bounds depend on c (gerne-method.md section 4), so the space is define-by-run: a trial
first draws c (from `search.space.c`, a set or a range), then lambda = c (beta + 1) inside the
bounds, which are the same for every c in lambda terms, then beta = lambda / c - 1. No
configuration can leave its bounds. `search.margin` keeps a safety distance from the bounds:
the usable lambda interval [lam_lo, lam_hi] shrinks by `margin` times its width at each finite
end (training near beta_max is unstable: there the largest majority group's weight approaches zero).

This module imports optuna only for type hints of the trial it is given, never Ray.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gerne_ray import groups
from gerne_ray.errors import GerneError
from gerne_ray.spec import SearchSpec

if TYPE_CHECKING:
    import optuna


def lambda_range(stats: groups.GroupStats, bounds: str, margin: float) -> tuple[float, float]:
    """The searched interval of lambda = c (beta + 1): [0, lambda_max] (simplified) or the exact one."""
    hi = groups.lambda_max(stats)
    if not math.isfinite(hi):
        raise GerneError(
            "search: every class of the training split is group-balanced (or has one group), so beta "
            "has no bounds and GERNE equals ERM in expectation; there is nothing to search: train one "
            "configuration with `gerne-ray train`, or use data with bias-conflicting training samples "
            "(data.conflict_ratio > 0)"
        )
    lo = 0.0
    if bounds == "exact":
        lo = groups.lambda_of(groups.exact_bounds(stats, 1.0)[0], 1.0)
    width = hi - lo
    lo_margin = margin * width if bounds == "exact" else 0.0  # lambda = 0 is ERM: safe, no margin
    return lo + lo_margin, hi - margin * width


def beta_range(stats: groups.GroupStats, c: float, bounds: str, margin: float) -> tuple[float, float]:
    """The searched interval of beta for one c."""
    lam_lo, lam_hi = lambda_range(stats, bounds, margin)
    return groups.beta_of(lam_lo, c), groups.beta_of(lam_hi, c)


def suggest_c_beta(trial: optuna.Trial, stats: groups.GroupStats, search: SearchSpec) -> dict:
    """Draw c (when more than one is offered), then lambda inside the bounds; return c and beta.

    Define-by-run: Optuna's parameters are c and lambda; beta is derived from lambda.
    """
    cs = search.space.c
    if isinstance(cs, list):
        c = trial.suggest_categorical("c", cs) if len(cs) > 1 else cs[0]
    else:
        c = trial.suggest_float("c", cs.low, cs.high) if cs.low < cs.high else cs.low
    lam = trial.suggest_float("lambda", *lambda_range(stats, search.bounds, search.margin))
    return {"c": float(c), "beta": groups.beta_of(lam, float(c))}


def suggest_optim(trial: optuna.Trial, search: SearchSpec) -> dict:
    """Draw lr and weight_decay (log-uniform) where search.space gives their ranges."""
    config = {}
    if search.space.lr is not None:
        config["lr"] = trial.suggest_float("lr", *search.space.lr, log=True)
    if search.space.weight_decay is not None:
        config["weight_decay"] = trial.suggest_float("weight_decay", *search.space.weight_decay, log=True)
    return config


def suggest(trial: optuna.Trial, stats: groups.GroupStats, search: SearchSpec) -> dict:
    """Draw one GERNE configuration (c, beta, and lr / weight_decay when searched) from an Optuna trial.

    Define-by-run: Optuna's parameters are c (when more than one is offered), lambda, lr and
    weight_decay; the returned dict holds the training configuration, beta derived from lambda.
    """
    return {**suggest_c_beta(trial, stats, search), **suggest_optim(trial, search)}
