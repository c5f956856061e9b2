"""Two objectives: search.metric as a list, the Pareto front, search.select, and resume.

The front and the selection rule are checked exactly on worked numbers without Ray; the spec's
checks in one-line errors (and the CLI's exit 2, nothing written); the searcher as a real
multi-objective Optuna study; then one real search on the shared local cluster whose driver is
killed mid-way and resumed, and whose best.json, final seeds, study and report are checked.
"""

import json
import math
import signal
import time

import optuna
import pandas as pd
import pytest
from test_tuning import tune_driver  # the tests folder is on sys.path (pytest's rootdir import)

from gerne_ray import cli, groups, pareto
from gerne_ray.data import load_dataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import training_stats
from gerne_ray.results import epoch_metrics, select_epoch
from gerne_ray.spec import load_spec
from gerne_ray.tuning import make_searcher, pick_best, selection

METRICS = ["val_gba", "val_wga"]
BASE = {
    "name": "pareto",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "model": {"arch": "mlp", "hidden": 16},
    "method": {"name": "gerne"},
    "optim": {"epochs": 2, "batch_size_per_class": 8, "lr": 0.05, "steps_per_epoch": 6},
    "search": {"metric": METRICS, "num_samples": 3, "max_concurrent": 1, "space": {"c": [0.5, 1.0]}},
}

# (val_gba, val_wga) of nine trials, with what makes each one interesting
POINTS = [
    (0.80, 0.50),  # 0 front
    (0.70, 0.60),  # 1 front
    (0.80, 0.50),  # 2 front: the same point as 0 (equal points dominate neither each other)
    (0.75, 0.40),  # 3 dominated by 0
    (0.75, 0.40),  # 4 dominated too: a duplicate of a dominated point
    (0.70, 0.55),  # 5 dominated by 1: equal GBA, lower WGA
    (0.60, 0.60),  # 6 dominated by 1: equal WGA, lower GBA
    (0.90, 0.30),  # 7 front: the highest GBA
    (0.65, 0.70),  # 8 front: the highest WGA
]


def trials_of(points, metrics=METRICS):
    return [{"trial_id": f"t{i}", "status": "completed", "reason": "", **dict(zip(metrics, p, strict=True))}
            for i, p in enumerate(points)]


def spec_in(tmp_path, **search):
    raw = json.loads(json.dumps(BASE))
    raw["search"].update(search)
    raw["storage"] = {"path": str(tmp_path / "runs")}
    return load_spec(raw)


# ---- the front and the rule, without Ray ---------------------------------------------------------


def test_dominance_and_the_front_on_worked_numbers():
    assert pareto.dominates((0.8, 0.5), (0.75, 0.4)) and pareto.dominates((0.7, 0.6), (0.7, 0.55))
    assert not pareto.dominates((0.8, 0.5), (0.8, 0.5))  # equal: neither dominates
    assert not pareto.dominates((0.9, 0.3), (0.8, 0.5)) and not pareto.dominates((0.8, 0.5), (0.9, 0.3))
    assert pareto.front(POINTS) == [0, 1, 2, 7, 8]
    assert pareto.front([]) == [] and pareto.front([(0.1, 0.1)]) == [0]
    assert pareto.front([(0.5, 0.5)] * 3) == [0, 1, 2]  # all tied: all on the front
    # three metrics: points dominated in one plane stay on the front through the third
    three = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.4, 0.4, 0), (1, 0, 0)]
    assert pareto.front(three) == [0, 1, 2, 3, 5]
    # one metric: the front is the maximum, with its ties
    assert pareto.front([(0.3,), (0.5,), (0.5,), (0.4,)]) == [1, 2]


def test_the_front_leaves_out_trials_without_finite_metrics():
    trials = trials_of(POINTS) + [
        {"trial_id": "nan", "status": "diverged", "reason": "loss nan", "val_gba": math.nan, "val_wga": 0.99},
        {"trial_id": "none", "status": "error", "reason": "boom", "val_gba": None, "val_wga": None},
    ]
    assert [t["trial_id"] for t in pareto.front_trials(trials, METRICS)] == ["t0", "t1", "t2", "t7", "t8"]


def test_select_maximises_under_floors_with_ties_to_the_earliest():
    front = pareto.front_trials(trials_of(POINTS), METRICS)
    by = {t["trial_id"]: t for t in front}
    assert pareto.select(front, METRICS).trial is by["t7"]  # default: the largest first metric
    assert pareto.select(front, METRICS, "val_wga").trial is by["t8"]
    chosen = pareto.select(front, METRICS, "val_gba", {"val_wga": 0.5})  # a floor met exactly counts
    assert chosen.trial is by["t0"] and chosen.met and chosen.note == ""  # t0 and t2 tie: the earlier
    assert pareto.select(front, METRICS, "val_gba", {"val_wga": 0.51}).trial is by["t1"]
    assert pareto.select(front, METRICS, "val_wga", {"val_gba": 0.75}).trial is by["t0"]
    # three metrics: a tie on the maximised one goes to the next metric, then the earliest
    three = trials_of([(0.8, 0.4, 0.2), (0.8, 0.5, 0.1), (0.8, 0.5, 0.1), (0.7, 0.9, 0.0)], ["a", "b", "c"])
    assert pareto.select(three, ["a", "b", "c"]).trial is three[1]
    assert pareto.select(three, ["a", "b", "c"], "c").trial is three[0]


def test_select_falls_back_to_the_trial_closest_to_the_floors_and_says_so():
    front = pareto.front_trials(trials_of(POINTS), METRICS)
    chosen = pareto.select(front, METRICS, "val_gba", {"val_wga": 0.8})  # the highest WGA is 0.7
    assert chosen.trial["trial_id"] == "t8" and not chosen.met
    assert "val_wga >= 0.8" in chosen.note and "the highest: val_wga 0.7" in chosen.note
    assert "t8, short by 0.1 in all" in chosen.note
    # two floors: the smallest summed shortfall (t0: 0 + 0.12; t1: 0.04 + 0.02; t7: 0 + 0.32; t8: 0.09 + 0)
    chosen = pareto.select(front, METRICS, "val_gba", {"val_gba": 0.74, "val_wga": 0.62})
    assert chosen.trial["trial_id"] == "t1" and not chosen.met
    # equal shortfalls (exact in binary: 0.125 + 0.375 both ways): the larger maximised metric
    pair = trials_of([(0.5, 0.75), (0.75, 0.5)])
    assert pareto.select(pair, METRICS, "val_gba", {"val_gba": 0.875, "val_wga": 0.875}).trial is pair[1]
    assert pareto.select(pair, METRICS, "val_wga", {"val_gba": 0.875, "val_wga": 0.875}).trial is pair[0]


def test_pick_best_with_one_metric_is_the_earliest_highest_and_with_two_the_rule(tmp_path):
    trials = trials_of([(0.6, 0.2), (0.8, 0.1), (0.8, 0.3), (0.7, 0.5)])
    trials.append({"trial_id": "e", "status": "error", "reason": "boom", "val_gba": 0.99, "val_wga": 0.99})
    assert pick_best(trials, "val_gba")["trial_id"] == "t1"  # one metric: ties to the earliest
    assert pick_best(trials, METRICS)["trial_id"] == "t2"  # t1 is dominated by t2
    spec = spec_in(tmp_path, select={"maximize": "val_gba", "subject_to": {"val_wga": 0.4}})
    assert pick_best(trials, spec.search.metric, spec.search.select)["trial_id"] == "t3"
    with pytest.raises(GerneError, match="no trial produced a finite val_gba and val_wga.*boom"):
        selection(trials[-1:], METRICS)


def test_each_objective_is_read_at_the_epoch_the_first_metric_selects():
    rows = [{"epoch": 1, "status": "ok", "val_gba": 0.5, "val_wga": 0.45},
            {"epoch": 2, "status": "ok", "val_gba": 0.7, "val_wga": 0.2},
            {"epoch": 3, "status": "ok", "val_gba": 0.6, "val_wga": 0.6}]
    assert select_epoch(rows, METRICS)["epoch"] == 2
    assert select_epoch(rows, ["val_wga", "val_gba"])["epoch"] == 3
    out = epoch_metrics(rows[2], rows, METRICS)
    assert (out["best_val_gba"], out["best_val_wga"], out["val_wga"]) == (0.7, 0.2, 0.6)
    rows[1]["val_wga"] = math.nan  # a metric the selected epoch lacks: a finite worst value
    assert epoch_metrics(rows[2], rows, METRICS)["best_val_wga"] == 0.0


# ---- the spec ------------------------------------------------------------------------------------


def test_the_spec_reads_several_metrics_and_checks_them(tmp_path):
    spec = spec_in(tmp_path)
    assert spec.search.metric == spec.search.metrics == METRICS and spec.search.primary == "val_gba"
    assert spec.search.scheduler == "fifo"  # the default with several metrics
    assert spec_in(tmp_path, metric=["val_wga"]).search.metric == "val_wga"  # a list of one: one metric
    assert load_spec(spec.model_dump(mode="json")) == spec  # spec.json reads back the same
    bad = [
        ({"metric": ["val_gba", "val_gba"]}, "search.metric: val_gba named twice"),
        ({"metric": ["val_gba", "val_loss"]}, "search.metric.1: Input should be 'val_gba'"),
        ({"select": {"maximize": "val_avg"}},
         "search.select: val_avg is not in search.metric (val_gba, val_wga)"),
        ({"select": {"subject_to": {"val_wga": 1.5}}},
         "search.select.subject_to.val_wga: Input should be less than or equal to 1"),
        ({"select": {"floor": 0.5}}, "search.select.floor: unknown key; remove it or use one of: maximize, "
                                     "subject_to"),
        ({"sampler": "cmaes"}, "search.sampler: Input should be 'tpe' or 'nsga2'"),
    ]
    for change, words in bad:
        with pytest.raises(GerneError) as err:
            spec_in(tmp_path, **change)
        assert words in str(err.value), str(err.value)


def test_asha_with_two_metrics_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    raw = {**BASE, "search": {**BASE["search"], "scheduler": "asha"},
           "storage": {"path": str(tmp_path / "r")}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    assert cli.main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "search.scheduler: asha" in err and "search.metric names 2 (val_gba, val_wga)" in err
    assert "search.scheduler: fifo" in err
    assert not (tmp_path / "r").exists()


# ---- the searcher --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stats():
    return training_stats(load_dataset(load_spec({"name": "s", **{k: BASE[k] for k in ("data",)}}).data))


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_searcher_is_a_seeded_multi_objective_study(tmp_path, stats, sampler):
    def sequence(folder):
        folder.mkdir(parents=True)
        spec = spec_in(tmp_path, sampler=sampler, num_samples=16)
        searcher = make_searcher(spec, stats, folder)
        out = []
        for i in range(12):  # past TPE's 10 start-up trials, through 3 NSGA-II generations of 4
            config = searcher.suggest(f"t{i}")
            groups.check_beta(stats, config["c"], config["beta"])
            out.append(config)
            # two conflicting objectives: beta near 0.5, and beta near -0.5
            searcher.on_trial_complete(f"t{i}", {"best_val_gba": -abs(config["beta"] - 0.5),
                                                 "best_val_wga": -abs(config["beta"] + 0.5)})
        return out, spec, searcher

    first, spec, searcher = sequence(tmp_path / "a")
    assert first == sequence(tmp_path / "b")[0]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "a" / "optuna.journal")))
    study = optuna.load_study(study_name=spec.name, storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    used = type(searcher._ot_study.sampler).__name__  # the sampler the searcher asked
    assert used == {"tpe": "TPESampler", "nsga2": "NSGAIISampler"}[sampler]
    for trial, config in zip(study.trials, first, strict=True):
        assert trial.values == pytest.approx([-abs(config["beta"] - 0.5), -abs(config["beta"] + 0.5)])


# ---- a real search, killed and resumed -----------------------------------------------------------


def study_of(run_dir, name):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def test_a_two_metric_search_resumes_and_reports_its_front(ray_cluster, tmp_path):
    spec = spec_in(tmp_path, final_seeds=1, select={"maximize": "val_gba", "subject_to": {"val_wga": 0.25}})
    driver = tune_driver(spec, tmp_path)
    lines = []
    try:
        for line in driver.stdout:  # kill the driver once the first trial has finished
            lines.append(line)
            if "  trial   1/3" in line:
                break
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    out = "".join(lines)
    assert "maximising val_gba and val_wga (their Pareto front)" in out, out[-3000:]
    first = next(line for line in lines if line.startswith("  trial   1/3"))
    assert "val_gba " in first and "val_wga " in first  # the progress line shows both objectives
    run_dir = spec.run_dir
    assert not (run_dir / "best.json").exists()
    done = [t for t in study_of(run_dir, spec.name).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 1 <= len(done) < 3

    start = time.monotonic()
    assert cli.main(["resume", str(run_dir)]) == 0
    print(f"resume: {time.monotonic() - start:.0f} s")
    trials = pd.read_parquet(run_dir / "trials.parquet")
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    assert len(trials) == 3 and set(trials.status) == {"completed"} and len(set(trials.trial_number)) == 3
    for _, t in trials.iterrows():  # each trial's point: both metrics at its epoch best by val_gba
        rows = hist[(hist.trial_id == t.trial_id) & (hist.stage == "search")].to_dict("records")
        epoch = select_epoch(rows, "val_gba")
        assert t.best_epoch == epoch["epoch"]
        assert (t.val_gba, t.val_wga) == (epoch["val_gba"], epoch["val_wga"])
        assert t.selection_metric == "val_gba"
    # the study is multi-objective and holds, for every trial, the point Tune saw
    study = {t.number: t for t in study_of(run_dir, spec.name).trials}
    for _, t in trials.iterrows():
        assert study[t.trial_number].values == pytest.approx([t.val_gba, t.val_wga])
    # best.json: the front, by the definition, and the trial the rule picks from it
    best = json.loads((run_dir / "best.json").read_text())
    points = trials.to_dict("records")
    expected = [p["trial_id"] for p in points
                if not any(q["val_gba"] >= p["val_gba"] and q["val_wga"] >= p["val_wga"]
                           and (q["val_gba"], q["val_wga"]) != (p["val_gba"], p["val_wga"]) for q in points)]
    front = best["pareto_front"]
    assert [e["trial_id"] for e in front] == expected
    for e in front:
        row = trials[trials.trial_id == e["trial_id"]].iloc[0]
        assert (e["config"]["c"], e["config"]["beta"], e["best_epoch"]) == (row.c, row.beta, row.best_epoch)
        assert (e["val_gba"], e["val_wga"], e["test_gba"], e["test_wga"]) == (
            row.val_gba, row.val_wga, row.test_gba, row.test_wga)
    meeting = [e for e in front if e["val_wga"] >= 0.25]  # else the closest: the highest WGA
    chosen = (max(meeting, key=lambda e: (e["val_gba"], e["val_wga"])) if meeting
              else max(front, key=lambda e: (e["val_wga"], e["val_gba"])))
    assert best["trial_id"] == chosen["trial_id"] and best["best_config"] == chosen["config"]
    assert best["selection"] == {"metrics": METRICS, "maximize": "val_gba", "subject_to": {"val_wga": 0.25},
                                 "trial_id": chosen["trial_id"], "met": bool(meeting),
                                 "note": best["selection"]["note"]}
    assert bool(best["selection"]["note"]) != bool(meeting)
    assert best["search"]["metric"] == METRICS and best["search"]["scheduler"] == "fifo"
    # the final seed retrained the selected configuration
    final = hist[hist.stage == "final"]
    assert best["final_seeds"]["seeds"] == [1] and final.trial_id.nunique() == 1
    params = json.loads((run_dir / "final" / final.trial_id.iloc[0] / "params.json").read_text())
    assert {k: params[k] for k in ("c", "beta")} == {k: best["best_config"][k] for k in ("c", "beta")}
    # the report: the front in report.md and its plot
    report = (run_dir / "report.md").read_text()
    assert f"## Pareto front ({len(front)} trial{'s' * (len(front) > 1)})" in report
    assert f"{best['trial_id']} (selected)" in report
    assert (run_dir / "plots" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![pareto.png](plots/pareto.png)" in report
