"""The search: Ray Tune + Optuna inside beta's bounds, ASHA, divergence, resume, seeds and the report.

The pure parts (trial specs, the objective, seed statistics, the searcher's determinism) run
without Ray; the rest runs real Tune experiments on the shared local cluster.
"""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from gerne_ray import cli, groups
from gerne_ray.data import load_dataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import Prepared, WorkerContext, train_loop, training_stats
from gerne_ray.results import epoch_metrics, select_epoch
from gerne_ray.spec import load_spec
from gerne_ray.tuning import (
    final_seeds,
    make_scheduler,
    make_searcher,
    pick_best,
    seed_statistics,
    trial_spec,
    tune,
)

BASE = {
    "name": "search",
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp", "hidden": 32},
    "method": {"name": "gerne", "c": 0.5},
    "optim": {"epochs": 4, "batch_size_per_class": 16, "lr": 0.1, "weight_decay": 5e-4},
    "search": {"num_samples": 4, "grace_period": 1, "max_concurrent": 2},
}


def spec_in(tmp_path, **sections):
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    raw["storage"] = {"path": str(tmp_path / "runs")}
    return load_spec(raw)


@pytest.fixture(scope="module")
def stats():
    return training_stats(load_dataset(load_spec(BASE).data))


# ---- without Ray -------------------------------------------------------------------------------


def test_trial_spec_sets_the_searched_values(tmp_path):
    spec = spec_in(tmp_path)
    t = trial_spec(spec, {"c": 0.25, "beta": 1.5, "lambda": 0.625, "lr": 0.03, "seed": 7}, "abc", tmp_path)
    assert (t.name, t.method.c, t.method.beta, t.optim.lr, t.seed) == ("abc", 0.25, 1.5, 0.03, 7)
    assert t.optim.weight_decay == spec.optim.weight_decay and t.storage.path == str(tmp_path)
    assert trial_spec(spec, {"c": 0.5, "beta": 0.0}, "x", tmp_path).seed == spec.seed


def test_the_objective_is_the_running_best_and_finite():
    rows = [{"epoch": 1, "status": "ok", "val_gba": 0.4}, {"epoch": 2, "status": "ok", "val_gba": 0.6},
            {"epoch": 3, "status": "ok", "val_gba": 0.5}]
    assert epoch_metrics(rows[2], rows, "val_gba")["best_val_gba"] == 0.6
    assert epoch_metrics(rows[0], rows[:1], "val_gba")["best_val_gba"] == 0.4
    diverged = {"epoch": 1, "status": "diverged", "loss": math.nan, "val_groups": []}
    out = epoch_metrics(diverged, [diverged], "val_gba")
    assert out["best_val_gba"] == 0.0 and "val_groups" not in out


def test_seed_statistics_in_numbers():
    keys = {f"{s}_{m}": None for s in ("val", "test")
            for m in ("gba", "wga", "avg", "weighted_avg", "class_balanced", "worst_class", "minority")}
    runs = [{**keys, "trial_id": str(i), "seed": i + 1, "status": "completed", "best_epoch": 3,
             "test_gba": g, "val_gba": g / 2} for i, g in enumerate([0.5, 0.6, 0.7])]
    out = seed_statistics(runs)
    assert out["seeds"] == [1, 2, 3]
    assert out["mean"]["test_gba"] == pytest.approx(0.6)
    assert out["std"]["test_gba"] == pytest.approx(math.sqrt(0.02 / 3))  # ddof 0
    assert out["mean"]["val_gba"] == pytest.approx(0.3) and out["mean"]["test_wga"] is None


def test_final_seeds_leave_out_the_searched_seed(tmp_path):
    spec = spec_in(tmp_path, seed=5, search={"final_seeds": 3})
    assert final_seeds(spec) == [6, 7, 8]


def test_pick_best_and_no_usable_trial():
    trials = [{"trial_id": "a", "status": "completed", "val_wga": 0.3, "reason": ""},
              {"trial_id": "b", "status": "stopped", "val_wga": 0.5, "reason": ""},
              {"trial_id": "c", "status": "error", "val_wga": None, "reason": "boom"},
              {"trial_id": "d", "status": "diverged", "val_wga": None, "reason": "loss nan"}]
    assert pick_best(trials, "val_wga")["trial_id"] == "b"
    with pytest.raises(GerneError, match="no trial produced a finite val_wga.*boom"):
        pick_best(trials[2:], "val_wga")


def test_scheduler_is_asha_on_epochs_or_fifo(tmp_path):
    asha = make_scheduler(spec_in(tmp_path, search={"grace_period": 2, "reduction_factor": 4}))
    assert type(asha).__name__ == "AsyncHyperBandScheduler"
    assert asha._time_attr == "epoch" and asha._metric == "best_val_gba" and asha._mode == "max"
    assert type(make_scheduler(spec_in(tmp_path, search={"scheduler": "fifo"}))).__name__ == "FIFOScheduler"


@pytest.mark.parametrize("metric", ["val_gba", "val_wga", "val_worst_class", "val_minority"])
def test_searcher_is_seeded_and_inside_the_bounds(tmp_path, stats, metric):
    """The real OptunaSearch: the same seed replays the same suggestions; each inside its bounds."""

    def sequence(seed, folder):
        folder.mkdir(parents=True)
        spec = spec_in(tmp_path, seed=seed, search={"metric": metric, "space": {"c": [0.25, 0.5, 1.0]}})
        searcher = make_searcher(spec, stats, folder)
        out = []
        for i in range(14):  # past TPE's 10 random start-up trials
            config = searcher.suggest(f"t{i}")
            groups.check_beta(stats, config["c"], config["beta"])
            assert config["lambda"] == pytest.approx(groups.lambda_of(config["beta"], config["c"]))
            out.append(config)
            searcher.on_trial_complete(f"t{i}", {f"best_{metric}": -abs(config["beta"] - 0.5)})
        assert (folder / "optuna.journal").is_file()
        return out

    first = sequence(0, tmp_path / "a")
    assert first == sequence(0, tmp_path / "b")
    assert first != sequence(1, tmp_path / "c")
    assert [c["trial_number"] for c in first] == list(range(14))


def test_tune_refuses_a_method_with_nothing_to_search(tmp_path):
    with pytest.raises(GerneError, match="method.name: erm has no hyperparameter of its own to search"):
        tune(load_spec(spec_in(tmp_path), ["method.name=erm"]))
    assert not (tmp_path / "runs").exists()


# ---- real Tune experiments ---------------------------------------------------------------------


def assert_selected_epochs(run_dir: Path, metric: str):
    """Each trial's row holds its best epoch by the metric, with that epoch's test metrics."""
    trials = pd.read_parquet(run_dir / "trials.parquet")
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    for _, t in trials.iterrows():
        rows = hist[hist.trial_id == t.trial_id].to_dict("records")
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        best = select_epoch(rows, metric)
        if best is None:
            assert t.status == "diverged" and t.best_epoch is None or math.isnan(t.best_epoch)
            continue
        assert t.best_epoch == best["epoch"] and t[metric] == best[metric]
        assert t.test_gba == best["test_gba"] and t.test_wga == best["test_wga"]
    return trials


def test_search_with_asha_divergence_seeds_and_report(ray_cluster, tmp_path, stats, capsys):
    # lr searched up to 1e4: some trials diverge, and the experiment goes on
    spec = spec_in(tmp_path, search={
        "num_samples": 6, "final_seeds": 2, "metric": "val_gba",
        "space": {"c": [0.5, 1.0], "lr": [0.01, 1e4]},
    })
    result = tune(spec)
    run_dir = spec.run_dir
    out = capsys.readouterr().out
    assert out.count("  trial ") == 6 and out.count("  seed ") == 2  # progress lines
    trials = assert_selected_epochs(run_dir, "val_gba")
    assert len(trials) == 6 and list(trials.trial_number) == list(range(6))
    assert set(trials.status) <= {"completed", "stopped", "diverged"}
    diverged = trials[trials.status == "diverged"]
    assert len(diverged) >= 1 and diverged.reason.str.contains("loss became").all()
    assert ((trials.status == "stopped") == (trials.epochs_run < 4)).all() or "diverged" in set(trials.status)
    for _, t in trials.iterrows():  # every trial inside its bounds, lr inside its range
        groups.check_beta(stats, t.c, t.beta)
        # each row carries its c's exact bounds (the report draws them)
        assert list(t.beta_bounds_exact) == pytest.approx(list(groups.exact_bounds(stats, t.c)))
        assert t.beta <= groups.simplified_bounds(stats, t.c)[1] and 0.01 <= t.lr <= 1e4
    # best.json: result.json's keys, the best trial's, and the seed statistics of 2 new seeds
    best = json.loads((run_dir / "best.json").read_text())
    assert best == json.loads(json.dumps(best))  # plain JSON
    healthy = trials[trials.status != "diverged"]
    assert best["trial_id"] == healthy.loc[healthy.val_gba.idxmax(), "trial_id"]
    assert best["val_gba"] == healthy.val_gba.max() and best["best_config"]["c"] == best["c"]
    assert {"test_gba", "test_wga", "val_groups", "test_groups", "beta_bounds_exact", "config"} <= set(best)
    final = best["final_seeds"]
    assert final["seeds"] == [1, 2] and len(final["runs"]) == 2
    assert final["mean"]["test_gba"] == pytest.approx(np.mean([r["test_gba"] for r in final["runs"]]))
    assert final["std"]["test_gba"] == pytest.approx(np.std([r["test_gba"] for r in final["runs"]]))
    assert best["search"]["trials"] == 6 and best["search"]["diverged"] == len(diverged)
    assert result.config == best["best_config"] and len(result.trials) == 6
    # the report, and `gerne-ray report` renders it again from the files alone
    report = (run_dir / "report.md").read_text()
    assert best["trial_id"] in report and "diverged" in report
    pngs = [run_dir / "plots" / p for p in ("metric_vs_beta.png", "best_groups.png", "learning_curves.png")]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        png.unlink()
    (run_dir / "report.md").unlink()
    assert cli.main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report and all(p.is_file() for p in pngs)
    # a rerun of the same spec resumes the finished experiment: nothing trains again
    again = tune(spec)
    assert again.best == result.best


def test_multi_worker_trials_drive_a_torch_trainer(ray_cluster, tmp_path):
    spec = spec_in(tmp_path, name="workers", scaling={"num_workers": 2}, optim={"epochs": 2},
                   search={"num_samples": 2, "max_concurrent": 1, "scheduler": "fifo"})
    result = tune(spec)
    trials = assert_selected_epochs(spec.run_dir, "val_gba")
    assert list(trials.status) == ["completed", "completed"]
    for trial_id in trials.trial_id:  # each trial's Train run, with its checkpoints
        assert list((spec.run_dir / "train" / trial_id).glob("checkpoint_*"))
    assert result.best["epochs_run"] == 2


def journal_trials(run_dir: Path, name: str) -> list:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


def checkpoints_state(folder: Path) -> dict:
    """The checkpoint files a trial's training wrote, with their modification times."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.glob("checkpoint_*/*") if p.is_file()}


def reported_epochs(folder: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / "result.json").read_text().splitlines()]


def tune_driver(spec, tmp_path: Path) -> subprocess.Popen:
    """`gerne-ray tune` on the spec in a separate driver process, on the session's Ray cluster."""
    import ray

    path = tmp_path / f"{spec.name}.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "gerne_ray.cli", "tune", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_the_driver_is_killed(ray_cluster, tmp_path):
    # 30 epochs, a checkpoint every 3rd: a reused actor starts the third trial at once, and the kill
    # must come between its first checkpoint and its end
    spec = spec_in(tmp_path, name="killed", optim={"epochs": 30},
                   search={"num_samples": 5, "max_concurrent": 1, "scheduler": "fifo", "checkpoint_every": 3})
    driver = tune_driver(spec, tmp_path)
    lines = []
    try:
        for line in driver.stdout:  # kill the driver once two trials have finished ...
            lines.append(line)
            if "  trial   2/5" in line:
                break
        done = {line.split()[2] for line in lines if line.startswith("  trial ")}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # ... and a third has written a checkpoint
            in_flight = [p for p in spec.run_dir.glob("*/checkpoint_*") if p.parent.name not in done]
            if in_flight:
                break
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    assert any("  trial   2/5" in line for line in lines), "".join(lines)[-3000:]
    run_dir = spec.run_dir
    finished = {t.number for t in journal_trials(run_dir, "killed")
                if t.state == optuna.trial.TrialState.COMPLETE}
    assert 2 <= len(finished) < 5 and not (run_dir / "trials.parquet").exists()
    before = {p.name: checkpoints_state(p) for p in run_dir.iterdir()
              if p.is_dir() and p.name not in ("train", "plots")}

    result = cli.main(["resume", str(run_dir)])
    assert result == 0
    trials = assert_selected_epochs(run_dir, "val_gba")
    assert len(trials) == 5 and set(trials.status) == {"completed"}
    assert len(set(trials.trial_number)) == 5
    # the searcher's state was kept: the Optuna study holds the 5 trials with the values Tune saw; a
    # trial the driver had started but Tune had not recorded (killed in between) is marked failed
    study = {t.number: t for t in journal_trials(run_dir, "killed")}
    complete = {n for n, t in study.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert complete == set(trials.trial_number) and finished <= complete
    others = [t.state for n, t in study.items() if n not in complete]
    assert others in ([], [optuna.trial.TrialState.FAIL])
    for _, t in trials.iterrows():
        assert study[t.trial_number].params["lambda"] == pytest.approx(t["lambda"])
        assert study[t.trial_number].value == pytest.approx(t.val_gba)
    # no finished trial ran twice: the checkpoints of trials finished before the kill are untouched
    # (Tune may restore one it had not yet recorded as finished: it loads the last checkpoint and
    # trains nothing) and no epoch of theirs was reported twice
    numbers = dict(zip(trials.trial_id, trials.trial_number, strict=True))
    done_before = [tid for tid in before if numbers.get(tid) in finished]
    assert len(done_before) >= 2
    for tid in done_before:
        assert len(before[tid]) > 0 and checkpoints_state(run_dir / tid) == before[tid], tid
        assert reported_epochs(run_dir / tid) == list(range(1, 31)), tid
    # the trial killed mid-way resumed from its checkpoint rather than from epoch 1 (or, when Tune had
    # not recorded it, was replaced by a new suggestion: the 5 trials are then the others)
    assert in_flight
    resumed = in_flight[0].parent
    if resumed.name in numbers:
        assert numbers[resumed.name] not in finished and reported_epochs(resumed).count(1) == 1
    else:
        assert study[max(study)].number > 4 and len(others) == 1


def test_report_of_an_unfinished_folder_says_what_is_missing(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trials.parquet" in err and "gerne-ray resume" in err and "Traceback" not in err



def test_an_interrupted_search_writes_no_result_and_resumes(ray_cluster, tmp_path):
    """Ctrl+C while the best configuration's seeds train: Tune saves its state and returns the seeds as
    they stand; `tune` must refuse to summarise them (it once wrote best.json from half-trained seeds)."""
    # 40 epochs: the second seed starts at once in the first one's actor and must not end before Ctrl+C
    spec = spec_in(tmp_path, name="interrupted", optim={"epochs": 40},
                   search={"num_samples": 2, "max_concurrent": 1, "scheduler": "fifo", "final_seeds": 2})
    driver = tune_driver(spec, tmp_path)
    lines = []
    try:
        for line in driver.stdout:  # interrupt once the first final seed has finished
            lines.append(line)
            if "  seed   1/2" in line:
                driver.send_signal(signal.SIGINT)
                break
        lines += driver.stdout.readlines()
        rc = driver.wait(timeout=120)
    finally:
        driver.kill()
    out = "".join(lines)
    assert rc != 0 and "search: interrupted with" in out and "of 2 trials finished" in out, out[-3000:]
    run_dir = spec.run_dir
    assert not (run_dir / "best.json").exists() and not (run_dir / "trials.parquet").exists()

    assert cli.main(["resume", str(run_dir)]) == 0
    best = json.loads((run_dir / "best.json").read_text())
    runs = best["final_seeds"]["runs"]
    assert [r["seed"] for r in runs] == [1, 2] and {r["status"] for r in runs} == {"completed"}
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    final = hist[hist.stage == "final"]
    # both seeds trained all 40 epochs, each once in the history (the interrupted one resumed from its
    # last checkpoint, up to checkpoint_every epochs back)
    assert sorted(final.groupby("trial_id").epoch.apply(list).tolist()) == [list(range(1, 41))] * 2

def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert cli.main(["resume", str(tmp_path / "nothing")]) == 2
    assert "no spec.json" in capsys.readouterr().err



def test_demo_compares_baselines_with_tuned_gerne_on_the_same_seeds(ray_cluster, tmp_path, capsys):
    assert cli.main(["demo", "--seeds", "2", "--trials", "2", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("erm ", "resample ", "gerne c="))]
    assert [r[0] for r in rows] == ["erm", "resample", "gerne"] and "seeds [1, 2]" in out
    best = json.loads((tmp_path / "demo" / "best.json").read_text())
    assert best["final_seeds"]["seeds"] == [1, 2] and best["search"]["trials"] == 2
    # the demo's search runs one trial at a time: on the one-node session cluster, with this machine's CPUs
    assert best["config"]["scaling"]["cpus_per_worker"] == min(4, os.cpu_count())
    erm = [json.loads((tmp_path / f"demo-erm-s{s}" / "result.json").read_text()) for s in (1, 2)]
    assert float(rows[0][1]) == pytest.approx(100 * np.mean([r["test_gba"] for r in erm]), abs=0.01)
    gerne_gba = 100 * best["final_seeds"]["mean"]["test_gba"]
    assert float(rows[2][3]) == pytest.approx(gerne_gba, abs=0.01)


def test_a_trial_whose_checkpoint_is_gone_has_an_empty_history(tmp_path):
    from ray.train import Checkpoint

    from gerne_ray.storage import RunFolder
    from gerne_ray.tuning import trial_history

    class Gone:  # a Tune result naming a checkpoint folder that was deleted (or never written)
        checkpoint = Checkpoint(str(tmp_path / "abc" / "checkpoint_000000"))
        metrics: dict = {}
        path = str(tmp_path / "abc")

    assert trial_history(Gone(), RunFolder(str(tmp_path), "run")) == []


# ---- speed: checkpoint policy, actor reuse, concurrency from the cluster ----------------------------


@pytest.mark.parametrize(("grace", "factor", "epochs"), [(1, 3, 4), (2, 3, 20), (10, 3, 60), (1, 2, 16),
                                                         (3, 4, 50), (5, 2, 5)])
def test_asha_rungs_are_where_ray_s_asha_compares(tmp_path, grace, factor, epochs):
    from gerne_ray.tuning import asha_rungs

    spec = spec_in(tmp_path, optim={"epochs": epochs},
                   search={"grace_period": grace, "reduction_factor": factor})
    scheduler = make_scheduler(spec)
    ray_rungs = ([] if type(scheduler).__name__ == "FIFOScheduler"
                 else sorted(m for m, _ in scheduler._brackets[0]._rungs if m < epochs))
    assert asha_rungs(spec) == ray_rungs
    assert asha_rungs(spec_in(tmp_path, search={"scheduler": "fifo"})) == []


def test_checkpoint_policy_of_a_trial(tmp_path):
    from gerne_ray.tuning import checkpoint_policy

    asha = spec_in(tmp_path, optim={"epochs": 20}, search={"grace_period": 2, "checkpoint_every": 5})
    assert checkpoint_policy(asha) == (5, frozenset({2, 6, 18}))
    fifo = spec_in(tmp_path, search={"scheduler": "fifo", "checkpoint_every": 3})
    assert checkpoint_policy(fifo) == (3, frozenset())
    assert spec_in(tmp_path).search.checkpoint_every is None  # null: 5, or 1 where trials may restart
    assert checkpoint_policy(spec_in(tmp_path, search={"scheduler": "fifo"})) == (5, frozenset())
    restarts = spec_in(tmp_path, search={"scheduler": "fifo"}, scaling={"max_failures": 2})
    assert checkpoint_policy(restarts) == (1, frozenset())
    ctx = WorkerContext()
    ctx.checkpoint_every, ctx.checkpoint_epochs = checkpoint_policy(asha)
    due = [e for e in range(1, 21) if ctx.checkpoint_due(e, last=e == 20)]
    assert due == [2, 5, 6, 10, 15, 18, 20]
    assert ctx.checkpoint_due(7, last=True)  # a diverged epoch ends the run: always checkpointed
    assert [e for e in range(1, 5) if WorkerContext().checkpoint_due(e, last=False)] == [1, 2, 3, 4]


class Recording(WorkerContext):
    """An in-process context keeping each checkpoint (a copy, as written) and each report, resuming from
    `start`."""

    def __init__(self, every: int, start: dict | None = None) -> None:
        super().__init__()
        self.checkpoint_every, self.start = every, start
        self.saved: dict[int, dict] = {}
        self.reported: list[int] = []

    def load_checkpoint(self) -> dict | None:
        return self.start

    def save(self, row: dict, state: dict) -> None:
        self.saved[row["epoch"]] = copy.deepcopy(state)

    def report(self, row: dict, history: list[dict]) -> None:
        self.reported.append(row["epoch"])


def test_a_run_resumed_from_an_older_checkpoint_redoes_the_epochs_after_it_once(tmp_path):
    """checkpoint_every 3 over 7 epochs: checkpoints at 3, 6 and 7; resumed from epoch 3's, the run trains
    4 to 7 again, exactly as the first time, and its history holds each epoch once."""
    spec = spec_in(tmp_path, optim={"epochs": 7}, search={"checkpoint_every": 3})
    dataset = load_dataset(spec.data)
    prepared = Prepared(dataset, training_stats(dataset))
    first = Recording(3)
    full = train_loop(spec, prepared, first, keep_best=True)
    assert sorted(first.saved) == [3, 6, 7] and first.reported == [1, 2, 4, 5]
    assert [r["epoch"] for r in first.saved[7]["history"]] == list(range(1, 8))
    best = max(full, key=lambda r: r["val_gba"])  # the best epoch's weights ride in the last checkpoint
    assert first.saved[7]["best_epoch"] == best["epoch"] and first.saved[7]["best_model"]

    again = Recording(3, start=first.saved[3])
    resumed = train_loop(spec, prepared, again, keep_best=True)
    assert [r["epoch"] for r in resumed] == list(range(1, 8))
    assert sorted(again.saved) == [6, 7] and again.reported == [4, 5]
    timing = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == [
        {k: v for k, v in r.items() if k not in timing} for r in full]


def test_concurrency_is_what_the_cluster_fits(tmp_path):
    from gerne_ray.tuning import trial_resources, trials_that_fit

    one = spec_in(tmp_path)
    assert trial_resources(one) == {"CPU": 1.0}
    assert trials_that_fit(trial_resources(one), {"CPU": 2.0}) == 2
    assert trials_that_fit({"CPU": 1.5}, {"CPU": 4.0}) == 2
    assert trials_that_fit({"CPU": 8.0}, {"CPU": 4.0}) == 1  # at least one (Ray says it does not fit)
    workers = spec_in(tmp_path, scaling={"num_workers": 2})
    assert trial_resources(workers)["CPU"] == pytest.approx(2.01)  # 2 workers and the trial's own share
    assert trials_that_fit(trial_resources(workers), {"CPU": 4.0}) == 1
    assert trials_that_fit(trial_resources(workers), {"CPU": 4.02}) == 2
    gpus = spec_in(tmp_path, scaling={"use_gpu": True, "gpus_per_worker": 0.5, "num_workers": 2})
    assert trial_resources(gpus)["GPU"] == 1.0
    assert trials_that_fit(trial_resources(gpus), {"CPU": 64.0, "GPU": 3.0}) == 3


def test_a_trial_alone_on_one_node_reserves_the_nodes_cpus():
    """scaling.cpus_per_worker null, one trial at a time: the node's CPUs, at most this machine's, on a
    cluster of one node that cannot grow; else 1 (with_concurrency's fallback)."""
    from gerne_ray.tuning import one_node_cpus

    assert one_node_cpus(nodes=1, cpus=2.0, most=2.0, machine=2) == 2.0
    assert one_node_cpus(nodes=1, cpus=4.0, most=4.0, machine=2) == 2.0  # declares more than there are
    assert one_node_cpus(nodes=1, cpus=8.0, most=8.0, machine=64) == 8.0
    assert one_node_cpus(nodes=1, cpus=0.5, most=0.5, machine=2) == 1.0  # Ray refuses a trial of 0 CPUs
    assert one_node_cpus(nodes=2, cpus=8.0, most=8.0, machine=8) is None  # its trial runs on any node
    assert one_node_cpus(nodes=1, cpus=2.0, most=10.0, machine=2) is None  # an autoscaler adds nodes


def test_a_search_fits_the_cluster_reuses_trial_actors_and_checkpoints_by_the_policy(ray_cluster, tmp_path):
    """max_concurrent null on the 4-CPU session cluster: 4 trials at once, 6 in all (two in reused actors);
    ASHA (rungs at epochs 1, 2 and 4) with checkpoint_every 3: every trial, stopped or not, checkpoints at
    those epochs, every third and its last, and its history holds each epoch it reported once."""
    from gerne_ray.tuning import with_concurrency

    spec = spec_in(tmp_path, name="auto", optim={"epochs": 7},
                   search={"num_samples": 6, "max_concurrent": None, "grace_period": 1, "reduction_factor": 2,
                           "checkpoint_every": 3})
    assert spec.search.max_concurrent is None and with_concurrency(spec).search.max_concurrent == 4
    assert with_concurrency(spec).scaling.cpus_per_worker == 1.0  # four trials of one CPU
    alone = with_concurrency(load_spec(spec, ["search.max_concurrent=1"]))
    # one at a time on the one-node session cluster (4 CPUs declared): this machine's CPUs, at most 4
    assert alone.search.max_concurrent == 1 and alone.scaling.cpus_per_worker == min(4, os.cpu_count())
    pinned = with_concurrency(load_spec(spec, ["search.max_concurrent=1", "scaling.cpus_per_worker=1"]))
    assert pinned.scaling.cpus_per_worker == 1.0
    pbt = with_concurrency(load_spec(spec, ["search.max_concurrent=1", "search.scheduler=pbt"]))
    assert pbt.scaling.cpus_per_worker == 1.0  # the population runs as the CPUs fit
    assert spec.scaling.cpus_per_worker is None
    result = tune(spec)
    best = json.loads((spec.run_dir / "best.json").read_text())
    assert best["search"]["max_concurrent"] == 4 and best["config"]["search"]["max_concurrent"] == 4
    assert json.loads((spec.run_dir / "spec.json").read_text())["search"]["max_concurrent"] is None
    assert best["config"]["scaling"]["cpus_per_worker"] == 1.0
    trials = assert_selected_epochs(spec.run_dir, "val_gba")
    hist = pd.read_parquet(spec.run_dir / "trial_histories.parquet")
    assert len(result.trials) == 6 and set(trials.status) <= {"completed", "stopped", "diverged"}
    for trial_id in trials.trial_id:
        text = (spec.run_dir / trial_id / "result.json").read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        epochs = [r["epoch"] for r in lines]
        assert epochs == list(range(1, len(epochs) + 1))  # each epoch reported once
        assert list(hist[hist.trial_id == trial_id].epoch) == epochs  # and in the history, to the last
        checkpointed = [r["epoch"] for r in lines if r.get("checkpoint_dir_name")]
        assert checkpointed == [e for e in epochs if e in (1, 2, 3, 4, 6) or e == epochs[-1]], trial_id
    assert set(hist.trained_in_trial) == set(trials.trial_id)
