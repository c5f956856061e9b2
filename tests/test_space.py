"""The search space: no configuration an Optuna sampler draws ever leaves beta's bounds."""

import math

import numpy as np
import optuna
import pytest

from gerne_ray import groups
from gerne_ray.errors import GerneError
from gerne_ray.space import beta_range, lambda_range, suggest
from gerne_ray.spec import SearchSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Colored MNIST at 0.5% conflicting (alpha_max = 0.995) and a table with empty groups.
CMNIST = groups.GroupStats(np.array([[1791] + [1] * 9] * 10) + 0)
EMPTY = groups.GroupStats(np.array([[50, 3, 0], [2, 2, 2], [0, 1, 40]]))


@pytest.mark.parametrize("stats", [CMNIST, EMPTY], ids=["cmnist", "empty-groups"])
@pytest.mark.parametrize("bounds", ["simplified", "exact"])
@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_no_drawn_configuration_violates_its_bounds(stats, bounds, margin):
    search = SearchSpec(bounds=bounds, margin=margin,
                        space={"c": [0.25, 0.5, 1.0], "lr": [1e-4, 1e-1], "weight_decay": [1e-5, 1e-2]})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    lam_max = groups.lambda_max(stats)
    seen_c = set()
    for _ in range(150):
        trial = study.ask()
        config = suggest(trial, stats, search)
        c, beta = config["c"], config["beta"]
        seen_c.add(c)
        groups.check_beta(stats, c, beta)  # inside the exact bounds
        p = groups.p_ext(stats, c, beta)
        assert p.min() >= -1e-12 and p.max() <= 1 + 1e-12
        lam = groups.lambda_of(beta, c)
        assert lam <= (1 - margin) * lam_max + 1e-9
        if bounds == "simplified":
            assert beta >= -1 - 1e-12
        assert 1e-4 <= config["lr"] <= 1e-1 and 1e-5 <= config["weight_decay"] <= 1e-2
        study.tell(trial, -abs(lam - 1.0))  # an objective that pulls lambda toward resampling
    assert seen_c == {0.25, 0.5, 1.0}


@pytest.mark.parametrize("bounds", ["simplified", "exact"])
def test_a_range_of_c_never_leaves_the_bounds(bounds):
    search = SearchSpec(bounds=bounds, space={"c": {"low": 0.2, "high": 1.0}})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    cs = []
    for _ in range(150):
        trial = study.ask()
        config = suggest(trial, EMPTY, search)
        groups.check_beta(EMPTY, config["c"], config["beta"])
        cs.append(config["c"])
        study.tell(trial, config["beta"])  # pulls beta (so c down, lambda up) toward its bound
    assert 0.2 <= min(cs) and max(cs) <= 1.0 and len(set(cs)) > 100


def test_a_reversed_c_range_is_refused():
    with pytest.raises(ValueError, match="low <= high"):
        SearchSpec(space={"c": {"low": 0.9, "high": 0.3}})


def test_the_same_seed_suggests_the_same_sequence():
    search = SearchSpec(space={"c": [0.5, 1.0]})

    def sequence(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        out = []
        for _ in range(20):
            trial = study.ask()
            out.append(suggest(trial, CMNIST, search))
            study.tell(trial, out[-1]["beta"] ** 2)
        return out

    assert sequence(3) == sequence(3)
    assert sequence(3) != sequence(4)


def test_ranges_in_numbers():
    # alpha_max = 0.995, A = 10: lambda_max = 0.995 / 0.895; beta_max(c = 0.5) = 1.2235
    lo, hi = beta_range(CMNIST, 0.5, "simplified", 0.0)
    assert (lo, round(hi, 4)) == (-1.0, 1.2235)
    lam_lo, lam_hi = lambda_range(CMNIST, "simplified", 0.1)
    assert lam_lo == 0.0 and lam_hi == pytest.approx(0.9 * 0.995 / 0.895)
    ex_lo, ex_hi = lambda_range(CMNIST, "exact", 0.0)
    assert ex_lo < 0 and ex_hi == pytest.approx(0.995 / 0.895)
    assert groups.exact_bounds(CMNIST, 1.0)[0] == pytest.approx(ex_lo - 1)


def test_balanced_data_has_nothing_to_search():
    with pytest.raises(GerneError, match="nothing to search"):
        lambda_range(groups.GroupStats(np.array([[5, 5], [7, 7]])), "simplified", 0.0)
    assert math.isinf(groups.lambda_max(groups.GroupStats(np.array([[5, 5], [7, 7]]))))


def test_a_reversed_range_is_refused():
    with pytest.raises(ValueError, match="low, high"):
        SearchSpec(space={"lr": [0.1, 0.001]})
