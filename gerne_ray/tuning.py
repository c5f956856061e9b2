"""Hyperparameter search with Ray Tune and Optuna: beta (and c, lr, weight decay) inside its bounds.

`tune(spec)` is the whole job. The training split's group statistics are computed once, on the
driver; they define the define-by-run Optuna space (gerne_ray.space), so no trial is proposed outside
beta's bounds. OptunaSearch (TPE, seeded with the spec's seed) suggests configurations, Tune limits
how many run at once (`search.max_concurrent`) and ASHA stops the weak ones early on the epoch count.
Every trial reports, each epoch, the best value so far of `search.metric` (`best_<metric>`): that is
what ASHA compares and what Optuna learns from, and a diverged trial reports a finite worst value.

A trial with one worker runs the training loop in-process inside its Tune trial; a trial with more
workers (or a GPU) drives a TorchTrainer whose rank 0 reports back through TuneReportCallback (the
Ray Train V2 pattern). The Optuna study lives in `optuna.journal` in the run folder (Optuna's
journal storage), so the searcher's knowledge survives a killed driver; Tune's experiment state
beside it resumes unfinished trials from their checkpoints (`gerne-ray resume RUN_DIR`). A trial that
fails (a node lost under it) is restarted from its latest checkpoint up to `scaling.max_failures`
times, on whichever node has room; each epoch's history row names the nodes it ran on (`node_ids`).

With `search.final_seeds: k` the best configuration is trained again with k new seeds (the spec's
seed + 1 ... + k; the searched seed is left out so the estimate is not the selection's lucky draw)
and best.json reports their mean and standard deviation.

Files in `<storage.path>/<name>/`: spec.json, trials.parquet (one row per trial: config, status,
selected epoch's metrics, per-group accuracies), trial_histories.parquet (every trial's epochs),
best.json (result.json's keys for the best trial, plus its config and the seed statistics),
report.md, report.html and plots/ (gerne_ray.report), optuna.journal, and Tune's and Train's own state.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from ray import tune as ray_tune
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from gerne_ray import groups, methods, pseudo, results, space
from gerne_ray.data.base import GroupedDataset
from gerne_ray.distributed import ensure_ray, read_checkpoint, user_error
from gerne_ray.errors import GerneError
from gerne_ray.loop import CHECKPOINT_FILE, Prepared, WorkerContext, save_state, train_loop
from gerne_ray.results import METRIC_KEYS, OPTIM_KEYS, SEED_KEY, epoch_metrics, history_rows, objective_key
from gerne_ray.spec import JobSpec, SpecLike, load_spec
from gerne_ray.storage import RunFolder, apply_storage_settings, storage_settings
from gerne_ray.training import claim_run_dir, prepare, read_spec_json, run_first_stages, summarize

log = logging.getLogger(__name__)
RAY_LOGGERS = ("ray.train", "ray.tune")  # their INFO lines ("Checkpoint successfully created") every epoch
FINAL_DIR = "final"
JOURNAL_FILE = "optuna.journal"
# Tune deletes a trial's older checkpoint when it registers a newer one and snapshots its experiment
# state after num_to_keep new checkpoints: with 2 kept, a driver killed between the two still finds
# the checkpoint its last snapshot names (with 1, that one could already be gone).
KEEP_CHECKPOINTS = 2
OUTPUT_FILES = ("trials.parquet", "trial_histories.parquet", "best.json", "report.md", "report.html", "plots",
                JOURNAL_FILE)


@dataclass
class TuneResult:
    """What `tune` returns: the best trial (best.json's content) and the trials table."""

    best: dict
    trials: object  # pandas.DataFrame, one row per trial (trials.parquet)
    run_dir: Path  # the local folder with the files (for a URI storage: its local mirror)
    location: str  # the run folder: a path or a URI

    @property
    def config(self) -> dict:
        """The best configuration: the method's searched hyperparameters (and lr, weight_decay, seed)."""
        return self.best["best_config"]


class TuneTrialContext(WorkerContext):
    """An in-process worker inside a Tune trial: checkpoints and metrics go through ray.tune.report."""

    def __init__(self, metric: str) -> None:
        import ray

        super().__init__()
        self.metric = metric
        self.node_id = ray.get_runtime_context().get_node_id()
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    def load_checkpoint(self) -> dict | None:
        """The trial's latest checkpoint (when Tune restores it), or None."""
        checkpoint = ray_tune.get_checkpoint()
        return None if checkpoint is None else read_checkpoint(checkpoint)

    def save(self, row: dict, state: dict) -> None:
        """Report the epoch's metrics with a checkpoint to Tune."""
        with tempfile.TemporaryDirectory() as folder:
            save_state(Path(folder) / CHECKPOINT_FILE, state)
            ray_tune.report(epoch_metrics(row, state["history"], self.metric),
                            checkpoint=ray_tune.Checkpoint.from_directory(folder))


def trial_spec(spec: JobSpec, config: dict, name: str, storage: str | Path) -> JobSpec:
    """The job spec of one trial: the searched values set, named after the trial."""
    raw = spec.model_dump(mode="json")
    raw["name"] = name
    raw["storage"]["path"] = str(storage)
    params = methods.params_class(spec.method.name).model_fields
    for key, value in config.items():
        if key in params:
            raw["method"][key] = value
        elif key in OPTIM_KEYS:
            raw["optim"][key] = float(value)
    raw["seed"] = int(config.get(SEED_KEY, spec.seed))
    return JobSpec.model_validate(raw)


def run_trial(config: dict, job: dict, prepared: Prepared, storage: dict | None = None) -> None:
    """Tune's trainable: train one configuration, in-process or on Ray Train workers.

    storage: the driver's endpoint and region settings (no credentials), for a worker process that
    did not inherit its environment (a cluster the driver connected to).
    """
    apply_storage_settings(storage or {})
    spec = JobSpec.model_validate(job)
    context = ray_tune.get_context()
    tspec = trial_spec(spec, config, context.get_trial_id(), f"{spec.folder.location}/train")
    if tspec.scaling.distributed:
        from ray.tune.integration.ray_train import TuneReportCallback

        from gerne_ray.distributed import fit_distributed

        fit_distributed(tspec, prepared.for_spec(tspec), callbacks=[TuneReportCallback()])
    else:
        train_loop(tspec, prepared.for_spec(tspec), TuneTrialContext(spec.search.metric))


def trial_dirname(trial) -> str:
    """Trial folders are named by trial id (so a trial's results are found from its id)."""
    return trial.trial_id


def t_range(search, ranking) -> tuple[float, float]:
    """The searched pseudo-group threshold: search.space.t, above the t that leaves a class without one."""
    lo, hi = search.space.t
    lo = max(lo, pseudo.min_threshold(ranking))
    if lo > hi:
        raise GerneError(
            f"search.space.t: [{search.space.t[0]}, {hi}] holds no threshold that gives every class a "
            f"pseudo-minority sample (the smallest is {lo:.4g}); raise its upper end"
        )
    return lo, hi


def optuna_space(trial, stats: groups.GroupStats, search, params, ranking: pseudo.Ranking | None = None,
                 num_attributes: int = 2) -> dict:
    """The define-by-run space handed to OptunaSearch: derived values returned as constants.

    With unknown attributes t comes first: beta's bounds follow from its pseudo-group counts. Then the
    method's own hyperparameters (`Method.suggest`), then lr and weight decay where searched.
    """
    config = {}
    if ranking is not None:
        config["t"] = trial.suggest_float("t", *t_range(search, ranking), log=True)
        stats = pseudo.pseudo_stats(ranking, config["t"], num_attributes)
    config.update(methods.get(params.name).suggest(trial, stats, search, params))
    config.update(space.suggest_optim(trial, search))
    if "c" in config and "beta" in config:
        config["lambda"] = groups.lambda_of(config["beta"], config["c"])
    config["trial_number"] = trial.number  # the order of suggestion (Tune's trial ids are random)
    return {k: v for k, v in config.items() if k not in trial.params}


def _journal_storage(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


_restoring: dict = {}  # run folder of the experiment being restored (it may have moved)


class JournalOptunaSearch(OptunaSearch):
    """OptunaSearch whose study lives in the run folder's journal file and survives a killed driver.

    Tune restores the searcher as pickled at its last snapshot; the journal holds every trial told
    since. A trial the journal shows running that Tune's snapshot does not know was interrupted
    before Tune recorded it: it is marked failed, so that the study and Tune agree.
    """

    journal = ""

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore, then the study reloaded from the journal (in the folder being resumed)."""
        super().restore(checkpoint_path)
        journal = Path(_restoring.get("run_dir", Path(self.journal).parent)) / JOURNAL_FILE
        storage = _journal_storage(journal)
        study = optuna.load_study(study_name=self._study_name, storage=storage,
                                  sampler=self._ot_study.sampler)
        known = {t._trial_id for t in self._ot_trials.values()}
        self.journal, self._storage, self._ot_study = str(journal), storage, study
        self._ot_trials = {k: optuna.trial.Trial(study, t._trial_id) for k, t in self._ot_trials.items()}
        for orphan in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if orphan._trial_id not in known:
                log.warning("trial %d of the study was interrupted before Tune recorded it: marked failed",
                            orphan.number)
                storage.set_trial_state_values(orphan._trial_id, optuna.trial.TrialState.FAIL)


def make_searcher(spec: JobSpec, stats: groups.GroupStats, run_dir: Path,
                  ranking: pseudo.Ranking | None = None, num_attributes: int = 2) -> JournalOptunaSearch:
    """OptunaSearch over the bounded space: TPE seeded by the spec, the study in a journal file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ranking is not None:
        t_range(spec.search, ranking)
    searcher = JournalOptunaSearch(
        space=functools.partial(optuna_space, stats=stats, search=spec.search, ranking=ranking,
                                num_attributes=num_attributes, params=spec.method),
        metric=objective_key(spec.search.metric),
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=spec.name,
        storage=_journal_storage(run_dir / JOURNAL_FILE),
    )
    searcher.journal = str(run_dir / JOURNAL_FILE)
    return searcher


def trial_retries(spec: JobSpec) -> ray_tune.FailureConfig:
    """Tune's restarts of a failed trial from its latest checkpoint: `scaling.max_failures` of them."""
    # for Ray Train trials too: their worker-group restarts cannot save a trial whose driver's node was lost
    return ray_tune.FailureConfig(max_failures=spec.scaling.max_failures)


def make_scheduler(spec: JobSpec):
    """ASHA on the epoch count (`search.scheduler: asha`) or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.search.scheduler == "fifo" or spec.search.grace_period >= spec.optim.epochs:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", metric=objective_key(spec.search.metric), mode="max",
        max_t=spec.optim.epochs, grace_period=spec.search.grace_period,
        reduction_factor=spec.search.reduction_factor,
    )


def _trainable(spec: JobSpec, prepared: Prepared):
    job = spec.model_dump(mode="json")
    job["storage"]["path"] = spec.folder.ray_storage  # absolute: trials run in other working directories
    s = spec.scaling
    # A multi-worker trial only drives its TorchTrainer: its workers hold the CPUs, it needs almost none.
    resources = {"cpu": 0.01} if s.distributed else {"cpu": s.cpus_per_worker}
    trainable = ray_tune.with_parameters(run_trial, job=job, prepared=prepared, storage=storage_settings())
    return ray_tune.with_resources(trainable, resources)


class Progress(Callback):
    """Prints one line per finished trial: its configuration, best metric and how it ended."""

    def __init__(self, label: str, total: int, metric: str, epochs: int) -> None:
        self.label, self.total, self.metric, self.epochs = label, total, metric, epochs
        self.start = time.perf_counter()

    def _line(self, trials: list, trial, outcome: str) -> None:
        # this trial is not marked finished yet; restored finished trials count too
        done = 1 + sum(t.status in ("TERMINATED", "ERROR") and t is not trial for t in trials)
        r, cfg = trial.last_result or {}, trial.config
        best = r.get(objective_key(self.metric))
        epoch = r.get("epoch", 0)
        if outcome == "completed" and r.get("status") == "diverged":
            outcome = "diverged"
        elif outcome == "completed" and epoch < self.epochs:
            outcome = f"stopped at epoch {epoch}"
        shown = "" if best is None else f"{self.metric} {100 * best:6.2f}"
        values = " ".join(f"{k}={v:.4g}" for k, v in cfg.items()
                          if k not in ("trial_number", "lambda") and isinstance(v, int | float))
        print(f"  {self.label} {done:>3}/{self.total} {trial.trial_id} {values:34s} {shown:18s} "
              f"{outcome} ({time.perf_counter() - self.start:.0f} s)", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial finished (or a scheduler stopped it)."""
        self._line(trials, trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial failed."""
        self._line(trials, trial, "error")


class PushFiles(Callback):
    """Copies the run's local files (the Optuna journal) to remote storage as trials finish."""

    def __init__(self, folder: RunFolder, *names: str) -> None:
        self.folder, self.names = folder, names

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial finished: its result is in the journal."""
        self.folder.push(*self.names)

    on_trial_error = on_trial_complete


def _fit(tuner_args: dict, location: str, folder: RunFolder, trainable, expected: int):
    """Resume the Tune experiment at location if it has state, else start it; refuse an interrupted one.

    Tune answers SIGINT (Ctrl+C) or SIGUSR1 by saving the experiment and returning the trials as they
    stand: then fewer than `expected` trials have finished, and nothing may be summarised from them.
    """
    if not ray_tune.Tuner.can_restore(location):
        grid = ray_tune.Tuner(trainable, **tuner_args).fit()
    else:
        log.warning("resuming the experiment in %s", location)
        _restoring["run_dir"] = folder.local
        try:
            tuner = ray_tune.Tuner.restore(location, trainable, resume_unfinished=True, resume_errored=True)
            grid = tuner.fit()
        finally:
            _restoring.clear()
    finished = grid.num_terminated + grid.num_errors
    if finished < expected:
        raise GerneError(
            f"search: interrupted with {finished} of {expected} trials finished; the experiment's state "
            f"is saved in {location}: run the same command again (or `gerne-ray resume` on the run "
            "folder) to continue it"
        )
    return grid


def search(spec: JobSpec, prepared: Prepared, folder: RunFolder):
    """Run (or resume) the search experiment; return Tune's ResultGrid."""
    s = spec.search
    folder.pull(JOURNAL_FILE)
    journal = folder.local / JOURNAL_FILE
    if journal.exists() and not ray_tune.Tuner.can_restore(folder.location):
        # killed before Tune saved any state: nothing of it can be resumed; keep the file, start anew
        journal.rename(folder.local / f"{JOURNAL_FILE}.stale-{int(time.time())}")
    args = {
        "tune_config": ray_tune.TuneConfig(
            search_alg=make_searcher(spec, prepared.stats, folder.local, prepared.ranking,
                                     max(prepared.dataset.num_attributes, 2)),
            scheduler=make_scheduler(spec),
            num_samples=s.num_samples,
            max_concurrent_trials=s.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        "run_config": ray_tune.RunConfig(
            name=spec.name,
            storage_path=folder.ray_storage,
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=trial_retries(spec),
            callbacks=[Progress("trial", s.num_samples, s.metric, spec.optim.epochs),
                       PushFiles(folder, JOURNAL_FILE)],
            verbose=0,
        ),
    }
    return _fit(args, folder.location, folder, _trainable(spec, prepared), s.num_samples)


def final_seeds(spec: JobSpec) -> list[int]:
    """The seeds the best configuration is trained again with: seed + 1 ... seed + final_seeds."""
    return [spec.seed + 1 + i for i in range(spec.search.final_seeds)]


def run_final(spec: JobSpec, prepared: Prepared, folder: RunFolder, best: dict):
    """Train the best trial's configuration with each final seed (a grid experiment in <run>/final)."""
    seeds = final_seeds(spec)
    fixed = {k: best[k] for k in config_keys([best]) if k != SEED_KEY and best.get(k) is not None}
    args = {
        "param_space": {**fixed, "seed": ray_tune.grid_search(seeds)},
        "tune_config": ray_tune.TuneConfig(max_concurrent_trials=spec.search.max_concurrent,
                                           trial_dirname_creator=trial_dirname),
        "run_config": ray_tune.RunConfig(
            name=FINAL_DIR,
            storage_path=folder.location,
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=trial_retries(spec),
            callbacks=[Progress("seed", len(seeds), spec.search.metric, spec.optim.epochs)],
            verbose=0,
        ),
    }
    return _fit(args, f"{folder.location}/{FINAL_DIR}", folder, _trainable(spec, prepared), len(seeds))


def trial_history(result, folder: RunFolder) -> list[dict]:
    """A trial's history: from its Tune checkpoint (in-process) or its Train checkpoint (workers)."""
    from ray.train import Checkpoint

    checkpoint = result.checkpoint
    path = (result.metrics or {}).get("checkpoint_path")
    if checkpoint is None and path:  # a path on the storage's file system
        checkpoint = Checkpoint(path, filesystem=folder.fs) if folder.remote else Checkpoint(path)
    if checkpoint is None:
        return []
    try:
        return list(read_checkpoint(checkpoint)["history"])
    except (GerneError, OSError) as err:  # the trial failed before or while checkpointing
        log.warning("trial %s: no readable checkpoint (%s)", Path(result.path).name, err)
        return []


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = user_error(error)
    text = str(cause if cause is not None else error).strip()
    return (text.splitlines() or [type(error).__name__])[-1 if cause is None else 0][:500]


def collect(spec: JobSpec, prepared: Prepared, grid, folder: RunFolder, stage: str) -> list[dict]:
    """One summary per trial (result.json's keys plus trial_id, config and status), in trial order."""
    trials = []
    for result in grid:
        trial_id = Path(result.path).name
        config = {k: v for k, v in result.config.items() if k != "trial_number"}
        tspec = trial_spec(spec, config, trial_id, f"{folder.location}/train")
        history = trial_history(result, folder)
        summary = summarize(tspec, prepared.for_spec(tspec), history)
        status, reason = summary["status"], summary["reason"]
        if result.error is not None:
            status, reason = "error", _first_line(result.error)
        elif status == "completed" and summary["epochs_run"] < spec.optim.epochs:
            status, reason = "stopped", f"stopped early by the scheduler after epoch {summary['epochs_run']}"
        summary.update(config)
        summary.update(status=status, reason=reason, name=spec.name, trial_id=trial_id, stage=stage,
                       seed=tspec.seed, lr=tspec.optim.lr, weight_decay=tspec.optim.weight_decay,
                       trial_number=result.config.get("trial_number", tspec.seed),
                       searched=[k for k in config if k != SEED_KEY])
        summary["history"] = history
        trials.append(summary)
    return sorted(trials, key=lambda t: t["trial_number"])


def config_keys(trials: list[dict]) -> list[str]:
    """The configuration columns of these trials: what was searched, then lr, weight decay and seed."""
    keys = [k for t in trials for k in t.get("searched", [])]
    return list(dict.fromkeys([*keys, *OPTIM_KEYS, SEED_KEY]))


def searches_anything(spec: JobSpec, prepared: Prepared) -> bool:
    """Whether the spec's search has a parameter: the method's own, t (pseudo-groups) or lr / weight decay."""
    method = methods.get(spec.method.name)
    pseudo_t = prepared.unknown and method.uses_groups
    return method.searchable() or pseudo_t or any(getattr(spec.search.space, k) for k in OPTIM_KEYS)


def trial_rows(trials: list[dict]) -> list[dict]:
    """trials.parquet's rows: config, status, the selected epoch's metrics and per-group tables."""
    drop = {"config", "history", "train_groups", "val_missing_groups", "test_missing_groups",
            "name", "searched", "params"}
    first = ("trial_number", "trial_id", "stage", "status", "reason", *config_keys(trials))
    rows = []
    for t in trials:
        row = {k: t.get(k) for k in first}
        row.update({k: v for k, v in t.items() if k not in drop and k not in row})
        rows.append(row)
    return rows


def history_table(trials: list[dict]) -> list[dict]:
    """trial_histories.parquet's rows: every trial's epochs (scalars only)."""
    return history_rows([
        {"trial_id": t["trial_id"], "stage": t["stage"],
         **{k: v for k, v in r.items() if not k.endswith("_groups")}}
        for t in trials for r in t["history"]
    ])


def pick_best(trials: list[dict], metric: str) -> dict:
    """The trial with the best selected validation metric (earliest trial on ties)."""
    scored = [t for t in trials if t["status"] != "error" and t[metric] is not None
              and math.isfinite(t[metric])]
    if not scored:
        reasons = "; ".join(sorted({t["reason"] for t in trials if t["reason"]}))[:500]
        raise GerneError(f"search: no trial produced a finite {metric} ({reasons or 'no trial ran'}); "
                         "check the spec's optim settings (a smaller optim.lr?) and the trials' reasons")
    return max(scored, key=lambda t: t[metric])


def seed_statistics(runs: list[dict]) -> dict:
    """Mean and standard deviation (ddof 0) over the final seeds of every validation and test metric."""
    out: dict = {"seeds": [r["seed"] for r in runs], "runs": [], "mean": {}, "std": {}}
    keys = METRIC_KEYS
    for r in runs:
        out["runs"].append({"trial_id": r["trial_id"], "seed": r["seed"], "status": r["status"],
                            "best_epoch": r["best_epoch"], **{k: r[k] for k in keys}})
    for k in keys:
        values = np.array([r[k] for r in runs if r[k] is not None], dtype=float)
        out["mean"][k] = float(values.mean()) if len(values) else None
        out["std"][k] = float(values.std()) if len(values) else None
    return out


def best_summary(spec: JobSpec, best: dict, trials: list[dict], final: list[dict]) -> dict:
    """best.json: the best trial keyed as result.json, its configuration, the search and seed statistics."""
    out = {k: v for k, v in best.items() if k not in ("history", "stage", "trial_number")}
    out["name"] = spec.name
    out["best_config"] = {k: best[k] for k in config_keys([best]) if best.get(k) is not None}
    out["search"] = {
        "trials": len(trials),
        **{s: sum(t["status"] == s for t in trials) for s in ("completed", "stopped", "diverged", "error")},
        "epochs_spent": sum(len(t["history"]) for t in trials),
        "metric": spec.search.metric,
        "bounds": spec.search.bounds,
        "margin": spec.search.margin,
        "scheduler": spec.search.scheduler,
    }
    out["final_seeds"] = seed_statistics(final) if final else None
    return out


def tune(spec: SpecLike, overrides: list[str] | None = None, dataset: GroupedDataset | None = None,
         run_dir: str | Path | None = None, allow_fixed: bool = False) -> TuneResult:
    """Search the spec's space with Ray Tune + Optuna, resuming its run folder if it holds a search.

    Returns the best trial (best.json's content: config, metrics, seed statistics) and the trials table.
    allow_fixed: a spec with nothing to search runs its one configuration (search.num_samples of it)
    instead of being refused (gerne_ray.compare does this with one trial).
    """
    import pandas as pd

    from gerne_ray import report

    spec = load_spec(spec, overrides)
    method = methods.get(spec.method.name)
    prepared = prepare(spec, dataset, check_method=False)
    if not allow_fixed and not searches_anything(spec, prepared):
        raise GerneError(
            f"method.name: {spec.method.name} has no hyperparameter of its own to search; give "
            "search.space.lr or search.space.weight_decay a range, or train one configuration with "
            "`gerne-ray train`"
        )
    if not prepared.unknown:  # a table without bounds: one clear line now
        method.check_search(prepared.stats, spec.search)
    if run_dir is not None:  # resume a folder that may have moved: its name and parent rule
        moved = RunFolder.at(run_dir)
        spec = load_spec(spec, [f"name={moved.name}", f"storage.path={moved.storage}"])
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune tables: Progress prints a line per trial
    ensure_ray(spec)  # the cluster must fit a trial before anything is written
    folder = spec.folder
    folder.check_writable()
    claim_run_dir(spec)
    run_dir = folder.local
    prepared = run_first_stages(spec, prepared, folder)  # once per job: every trial cuts its own t
    print(f"gerne-ray tune {spec.name}: {spec.search.num_samples} trials of {spec.method.name} on "
          f"{spec.data.dataset}, maximising {spec.search.metric}; results in {folder.location}", flush=True)
    trials = collect(spec, prepared, search(spec, prepared, folder), folder, "search")
    best = pick_best(trials, spec.search.metric)
    final: list[dict] = []
    if spec.search.final_seeds:
        final = collect(spec, prepared, run_final(spec, prepared, folder, best), folder, "final")
    summary = best_summary(spec, best, trials, final)
    rows = trial_rows(trials)
    results.write_rows_parquet(run_dir / "trials.parquet", rows)
    results.write_rows_parquet(run_dir / "trial_histories.parquet", history_table(trials + final))
    results.write_json(run_dir / "best.json", summary)
    report.write_report(run_dir)
    folder.push(*OUTPUT_FILES)
    return TuneResult(best=summary, trials=pd.DataFrame(rows), run_dir=run_dir, location=folder.location)


def resume(run_dir: str | Path) -> TuneResult:
    """Continue the search in run_dir (a path or URI, from its spec.json) where it stopped."""
    folder = RunFolder.at(run_dir)
    folder.pull("spec.json")
    spec_file = folder.local / "spec.json"
    if not spec_file.is_file():
        raise GerneError(f"{run_dir}: no spec.json here; pass the run folder a `gerne-ray tune` created "
                         "(<storage.path>/<name>)")
    raw = read_spec_json(spec_file, "restore it, or rerun `gerne-ray tune SPEC` on the original spec")
    return tune(raw, run_dir=run_dir)


__all__ = ["tune", "resume", "TuneResult", "run_trial", "trial_spec", "final_seeds", "seed_statistics"]

