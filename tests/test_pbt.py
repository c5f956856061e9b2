"""search.scheduler: pbt: Population Based Training over lambda = c (beta + 1), c and lr, inside beta's
bounds. The pure parts (the explore step's clipping, the seeded first population, the scheduler, the
spec's refusals) run without Ray; one real PBT search, its driver killed mid-way and resumed, checks
every history row of every trial against the bounds."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from ray.tune.schedulers import PopulationBasedTraining

from gerne_ray import cli, groups
from gerne_ray.data import load_dataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import training_stats
from gerne_ray.spec import load_spec
from gerne_ray.tuning import explore_inside_bounds, make_scheduler, pbt_population, pbt_ranges

# colored_digits at 2%: lambda_max = 1.514018691588785 (beta's exact upper bound 0.514 for c = 1, 2.028
# for c = 0.5); with search.margin 0.01 PBT keeps lambda in [0, 0.99 lambda_max]
LAMBDA_MAX = 1.514018691588785
BASE = {
    "name": "pbt",
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp", "hidden": 32},
    "method": {"name": "gerne", "c": 0.5},
    "optim": {"epochs": 6, "batch_size_per_class": 16, "lr": 0.1, "weight_decay": 5e-4},
    # synchronous: every trial waits at epochs 2 and 4, and the worst copies the best there (asynchronous
    # PBT skips an exploit whose donor has no checkpoint marked yet: with 4 trials, often all of them)
    "search": {"num_samples": 4, "scheduler": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
               "synch": True, "space": {"c": [0.5, 1.0], "lr": [0.01, 0.3]}},
}


def spec_in(tmp_path, *overrides):
    return load_spec({**BASE, "storage": {"path": str(tmp_path / "runs")}}, list(overrides))


@pytest.fixture(scope="module")
def stats():
    return training_stats(load_dataset(load_spec(BASE).data))


# ---- without Ray -------------------------------------------------------------------------------


def test_lambda_max_is_the_one_the_numbers_below_assume(stats):
    assert groups.lambda_max(stats) == pytest.approx(LAMBDA_MAX, rel=1e-12)


def test_explore_clips_into_the_ranges_and_derives_beta_inside_its_bounds(tmp_path, stats):
    ranges = pbt_ranges(spec_in(tmp_path), stats)
    hi = 0.99 * LAMBDA_MAX
    assert ranges.keys() == {"lambda", "c", "lr"} and ranges["lambda"] == pytest.approx((0.0, hi))
    assert (ranges["c"], ranges["lr"]) == ((0.5, 1.0), (0.01, 0.3))
    # PBT multiplied lambda 1.3 by 1.2 (1.56, past the bound) and moved c to 1: lambda is clipped to
    # 0.99 lambda_max and beta follows for the new c
    out = explore_inside_bounds({"lambda": 1.56, "c": 1.0, "lr": 0.36, "beta": 1.6, "x": "kept"}, ranges)
    assert out.pop("x") == "kept"
    assert out == pytest.approx({"lambda": hi, "c": 1.0, "lr": 0.3, "beta": hi - 1.0})
    assert out["beta"] == pytest.approx(0.4988785046728972)
    # the same lambda with c = 0.5: beta = lambda / 0.5 - 1, its upper bound twice as far
    half = explore_inside_bounds({"lambda": 1.56, "c": 0.5, "lr": 0.008, "beta": 0.0}, ranges)
    assert half["beta"] == pytest.approx(2 * hi - 1.0) and half["lr"] == 0.01
    for config in (out, half):
        lo, up = groups.exact_bounds(stats, config["c"])
        assert lo <= config["beta"] <= up
    # a value inside its range is left as PBT made it
    inside = explore_inside_bounds({"lambda": 0.6, "c": 0.5, "lr": 0.1, "beta": 9.0}, ranges)
    assert inside == pytest.approx({"lambda": 0.6, "c": 0.5, "lr": 0.1, "beta": 0.2})


def test_the_first_population_is_seeded_and_inside_the_bounds(tmp_path, stats):
    first = pbt_population(spec_in(tmp_path), stats)
    assert first == pbt_population(spec_in(tmp_path), stats)
    assert first != pbt_population(spec_in(tmp_path, "seed=1"), stats)
    assert len(first) == 4 and all(set(c) == {"c", "lambda", "beta", "lr"} for c in first)
    for config in first:
        groups.check_beta(stats, config["c"], config["beta"])
        assert config["lambda"] == pytest.approx(config["c"] * (config["beta"] + 1))
        assert 0 <= config["lambda"] <= 0.99 * LAMBDA_MAX and 0.01 <= config["lr"] <= 0.3


def test_the_scheduler_is_pbt_on_epochs_comparing_this_epochs_metric(tmp_path, stats):
    pbt = make_scheduler(spec_in(tmp_path, "search.perturbation_interval=3"), stats)
    assert isinstance(pbt, PopulationBasedTraining) and pbt.epochs == 6
    assert (pbt._time_attr, pbt._metric, pbt._metric_op) == ("epoch", "last_val_gba", 1.0)
    assert pbt._perturbation_interval == 3 and pbt._quantile_fraction == 0.25 and pbt._synch
    assert set(pbt._hyperparam_mutations) == {"lambda", "c", "lr"}
    assert pbt._hyperparam_mutations["c"] == [0.5, 1.0]
    one_c = make_scheduler(spec_in(tmp_path, "search.space.c=[0.5]", "search.space.lr=null"), stats)
    assert set(one_c._hyperparam_mutations) == {"lambda"}
    with pytest.raises(ValueError, match="pass stats"):
        make_scheduler(spec_in(tmp_path))


class Controller:
    """What PBT asks Tune's controller for: its trials, and the live ones (not terminated)."""

    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return [t for t in self.trials if t.status != "TERMINATED"]


def test_a_resumed_synchronous_pbt_runs_every_trial_on(tmp_path, stats):
    # Resumed after its driver was killed, every trial is pending and has reported epoch 4 of 6 (interval
    # 2). Ray's PBT alone would start each clock at 0, pause each trial after its next epoch (5) and then
    # set the next synchronisation point to 5, which no waiting trial is below: none would run again (a
    # CI run's resumed search spun for minutes). Here each trial runs to its end, one at a time, as Tune
    # runs them: choose a trial, feed it epochs until the scheduler says pause, or its last epoch.
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    pbt = make_scheduler(spec_in(tmp_path, "search.perturbation_interval=2"), stats)
    trials = [Trial("run_trial", config={"lambda": 0.5, "c": 0.5, "lr": 0.1}, stub=True) for _ in range(4)]
    controller = Controller(trials)
    for t in trials:
        t.run_metadata.last_result = {"epoch": 4, "last_val_gba": 0.5}
        pbt.on_trial_add(controller, t)
    assert {pbt._trial_state[t].last_train_time for t in trials} == {4}
    epochs = {t: 4 for t in trials}
    for _ in range(20):
        trial = pbt.choose_trial_to_run(controller)
        if trial is None:
            break
        trial.set_status(Trial.RUNNING)
        decision = TrialScheduler.CONTINUE
        while decision == TrialScheduler.CONTINUE and epochs[trial] < 6:
            epochs[trial] += 1
            trial.run_metadata.last_result = {"epoch": epochs[trial], "last_val_gba": 0.5}
            decision = pbt.on_trial_result(controller, trial, dict(trial.last_result))
        trial.set_status(Trial.TERMINATED if epochs[trial] == 6 else Trial.PAUSED)
    assert all(t.status == Trial.TERMINATED for t in trials), "a trial left waiting: the search would hang"
    assert set(epochs.values()) == {6}


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.beta_schedule=linear", "method.beta_end=0.5"], "method.beta_schedule must be constant"),
    (["search.final_seeds=2"], "set search.final_seeds 0"),
    (["scaling.num_workers=2"], "runs each trial in-process"),
    (["data.attributes=unknown"], "needs known attributes"),
    (["method.name=erm"], "which method erm does not have"),
])
def test_what_pbt_cannot_run_is_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(GerneError, match=f"search.scheduler: pbt .*{message}"):
        spec_in(tmp_path, *overrides)


# ---- a real PBT search, its driver killed and resumed --------------------------------------------


def test_a_pbt_search_killed_and_resumed_keeps_every_beta_inside_its_bounds(ray_cluster, tmp_path, stats):
    import ray

    spec = spec_in(tmp_path, "name=pbt-killed")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    run_dir = spec.run_dir
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "gerne_ray.cli", "tune", str(path)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:  # kill the driver once PBT has exploited (pbt_global.txt logs each exploit)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None:
                if (run_dir / "pbt_global.txt").is_file():
                    break
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.kill()
            driver.wait(timeout=60)
    assert (run_dir / "pbt_global.txt").is_file(), (tmp_path / "driver.log").read_text()[-3000:]
    assert not (run_dir / "trials.parquet").exists()  # killed mid-way

    assert cli.main(["resume", str(run_dir)]) == 0
    trials = pd.read_parquet(run_dir / "trials.parquet")
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    assert sorted(trials.trial_number) == [0, 1, 2, 3]
    ids = set(trials.trial_id)
    lam_hi = 0.99 * LAMBDA_MAX
    for r in hist.itertuples():  # every epoch of every trial: beta inside its bounds for that epoch's c
        lo, hi = groups.exact_bounds(stats, r.c)
        assert lo <= r.beta <= hi, r
        assert -1e-12 <= r.c * (r.beta + 1) <= lam_hi + 1e-12 and r.c in (0.5, 1.0) and 0.01 <= r.lr <= 0.3
        assert r.trained_in_trial in ids
    inherited = 0
    for t in trials.itertuples():
        rows = hist[hist.trial_id == t.trial_id].sort_values("epoch")
        assert list(rows.epoch) == list(range(1, 7)) and set(rows.status) == {"ok"}
        inherited += int((rows.trained_in_trial != t.trial_id).sum())
        last = rows.iloc[-1]
        if last.trained_in_trial == t.trial_id:  # its last epochs trained with its final configuration
            assert (last.c, last.beta, last.lr) == pytest.approx((t.c, t.beta, t.lr))
        # the epoch it reports (selected by val_gba) is one of its lineage's rows
        assert t.val_gba == rows[rows.epoch == t.best_epoch].val_gba.item()
    assert inherited > 0  # some trial continued another's checkpoint: its first epochs name that trial
    best = json.loads((run_dir / "best.json").read_text())
    assert best["search"]["scheduler"] == "pbt"
    assert best["search"]["epochs_spent"] == trials.epochs_trained.sum() >= 4
    # the report draws beta per epoch of every trial
    assert (run_dir / "plots" / "beta_schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<h2 id="schedule">' in (run_dir / "report.html").read_text()
