"""method.beta_schedule: beta per epoch against worked numbers, its checks against the bounds, and a real
training run whose history shows the schedule it trained with (no Ray)."""

import math

import pandas as pd
import pytest

from gerne_ray import groups
from gerne_ray.errors import GerneError
from gerne_ray.loop import WorkerContext, load_state, train_loop
from gerne_ray.methods.gerne import GERNEParams, beta_at
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, train
from gerne_ray.tuning import tune

# synthetic data (K = A = 2, 5% conflicting): beta's exact bounds are [-10/9, 10/9] for c = 1 and
# [-11/9, 29/9] for c = 0.5 (lambda_max = 19/9)
SYNTH = {
    "name": "sched",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "gerne", "c": 1.0, "beta": 0.0},
    "optim": {"lr": 0.05, "epochs": 5, "batch_size_per_class": 8, "steps_per_epoch": 3},
}


def params(**kw) -> GERNEParams:
    return GERNEParams(**{"c": 1.0, "beta": 0.0, **kw})


def spec_with(tmp_path, *overrides):
    return load_spec({**SYNTH, "storage": {"path": str(tmp_path)}}, list(overrides))


# ---- the schedule's values -------------------------------------------------------------------------


def test_constant_is_beta_every_epoch():
    assert [beta_at(params(beta=0.7), e, 5) for e in range(1, 6)] == [0.7] * 5


def test_linear_and_cosine_after_a_warmup_in_worked_numbers():
    # E = 5, W = 1: epoch 1 is the warmup, the ramp is epochs 2..5 with p = 0, 1/3, 2/3, 1
    linear = params(beta=0.0, beta_end=1.0, beta_schedule="linear", warmup_epochs=1)
    assert [beta_at(linear, e, 5) for e in range(1, 6)] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1], abs=1e-15)
    # cosine: (1 - cos(pi p)) / 2 = 0, 0, 1/4, 3/4, 1 at those p
    cosine = params(beta=0.0, beta_end=1.0, beta_schedule="cosine", warmup_epochs=1)
    assert [beta_at(cosine, e, 5) for e in range(1, 6)] == pytest.approx([0, 0, 0.25, 0.75, 1], abs=1e-15)


def test_a_falling_schedule_without_warmup_in_worked_numbers():
    # E = 4, no warmup: p = 0, 1/3, 2/3, 1 from beta 1 to beta_end -1/2 (a step of -1/2 per epoch)
    linear = params(beta=1.0, beta_end=-0.5, beta_schedule="linear")
    assert [beta_at(linear, e, 4) for e in range(1, 5)] == pytest.approx([1.0, 0.5, 0.0, -0.5], abs=1e-15)
    cosine = params(beta=1.0, beta_end=-0.5, beta_schedule="cosine")  # 1 - 1.5 x (0, 1/4, 3/4, 1)
    expected = [1.0, 0.625, -0.125, -0.5]
    assert [beta_at(cosine, e, 4) for e in range(1, 5)] == pytest.approx(expected, abs=1e-15)
    # a two-epoch ramp: its two ends
    assert [beta_at(linear, e, 2) for e in (1, 2)] == [1.0, -0.5]


# ---- what the spec refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.beta_schedule=linear"], "beta_schedule linear ramps from beta to beta_end: set beta_end"),
    (["method.beta_end=0.5"], "beta_end .0.5. needs beta_schedule linear or cosine"),
    (["method.beta_end=0.0"], "beta_end .0.0. needs beta_schedule linear or cosine"),  # even beta's value
    (["method.warmup_epochs=2"], "warmup_epochs needs beta_schedule linear or cosine"),
    (["method.beta_schedule=cosine", "method.beta_end=0.5", "method.warmup_epochs=4"],
     r"method.warmup_epochs: 4 leaves no ramp in optim.epochs 5; .* use warmup_epochs <= 3"),
    (["method.beta_schedule=cosine", "method.beta_end=0.5", "optim.epochs=1"],
     r"use warmup_epochs <= 0 \(or more epochs\)"),
])
def test_an_incomplete_schedule_is_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(GerneError, match=message):
        spec_with(tmp_path, *overrides)


def test_both_ends_are_checked_against_the_bounds_before_training(tmp_path):
    # c = 1: the upper bound is 10/9; beta_end 1.5 is past it (inside it for c = 0.5)
    spec = spec_with(tmp_path, "method.beta_schedule=linear", "method.beta_end=1.5")
    with pytest.raises(GerneError, match=r"beta_end = 1.5 is outside its bounds \[-1.11111, 1.11111\]"):
        prepare(spec)
    with pytest.raises(GerneError, match=r"method.beta = 1.5 is outside"):
        prepare(spec_with(tmp_path, "method.beta_schedule=linear", "method.beta_end=0.5", "method.beta=1.5"))
    prepare(spec_with(tmp_path, "method.beta_schedule=linear", "method.beta_end=1.5", "method.c=0.5"))
    assert not (tmp_path / "sched").exists()


def test_a_search_refuses_a_beta_end_outside_the_bounds_of_a_c_it_may_draw(tmp_path):
    # inside the bounds for c = 0.5 (29/9), outside them for c = 1 (10/9): refused before any trial
    spec = spec_with(tmp_path, "method.beta_schedule=linear", "method.beta_end=2.0",
                     "search.space.c=[0.5, 1.0]")
    with pytest.raises(GerneError, match=r"method.beta_end = 2 is outside beta's bounds .* for c = 1"):
        tune(spec)
    assert not (tmp_path / "sched").exists()


def test_every_epochs_beta_is_checked_as_it_is_set(tmp_path):
    """The loop's own check: a schedule that leaves the bounds (here past the spec's checks, as a trial's
    c or t could move them) stops with one line naming the epoch."""
    spec = spec_with(tmp_path, "method.beta_schedule=linear", "method.beta_end=3.0", "method.c=0.5")
    prepared = prepare(spec)  # inside the bounds for c = 0.5
    spec.method.c = 1.0  # the bounds shrink to [-10/9, 10/9]: epochs 1-2 (beta 0, 0.75) inside, 3 not
    with pytest.raises(GerneError, match=r"beta_schedule's beta of epoch 3 = 1.5 is outside its bounds"):
        train_loop(spec, prepared, WorkerContext())


# ---- a real run -----------------------------------------------------------------------------------


def test_the_history_records_the_schedule_the_run_trained_with(tmp_path):
    spec = spec_with(tmp_path, "method.beta_schedule=cosine", "method.beta_end=1.0", "method.warmup_epochs=1")
    result = train(spec)
    history = pd.read_parquet(tmp_path / "sched" / "history.parquet")
    assert list(history.epoch) == [1, 2, 3, 4, 5] and set(history.status) == {"ok"}
    assert list(history.beta) == pytest.approx([0, 0, 0.25, 0.75, 1], abs=1e-15)
    assert list(history.c) == [1.0] * 5 and list(history.lr) == [0.05] * 5
    # the applied beta: the epoch's mean L_ext is (1 + beta) mean L_lb - beta mean L_b, exactly that beta's
    for r in history.itertuples():
        assert r.loss_ext == pytest.approx((1 + r.beta) * r.loss_lb - r.beta * r.loss_b, rel=1e-6, abs=1e-9)
    for other in (-0.2, 0.5):  # and not another's (the two losses differ enough to tell)
        r = history.iloc[3]
        assert not math.isclose(r.loss_ext, (1 + other) * r.loss_lb - other * r.loss_b, rel_tol=1e-4)
    assert result["params"]["beta_schedule"] == "cosine" and result["params"]["beta_end"] == 1.0
    for r in history.itertuples():
        lo, hi = groups.exact_bounds(prepare(spec).stats, r.c)
        assert lo <= r.beta <= hi


def test_a_restored_run_trains_on_with_the_specs_learning_rate(tmp_path):
    """What a PBT exploit needs: the checkpoint's optimiser state, this spec's lr and weight decay."""
    first = spec_with(tmp_path, "optim.epochs=2")
    prepared = prepare(first)
    folder = tmp_path / "ckpt"
    train_loop(first, prepared, WorkerContext(checkpoint_dir=folder))
    second = spec_with(tmp_path, "optim.epochs=3", "optim.lr=0.01", "optim.weight_decay=0.02",
                       "method.beta=0.5")
    history = train_loop(second, prepared, WorkerContext(checkpoint_dir=folder))
    assert [r["lr"] for r in history] == [0.05, 0.05, 0.01]
    assert [r["beta"] for r in history] == [0.0, 0.0, 0.5]
    saved = load_state(folder / "checkpoint.pt")["optimizer"]["param_groups"][0]
    assert (saved["lr"], saved["weight_decay"]) == (0.01, 0.02)
