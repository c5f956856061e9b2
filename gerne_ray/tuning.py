"""Hyperparameter search with Ray Tune and Optuna: beta (and c, lr, weight decay) inside its bounds.

`tune(spec)` is the whole job. The training split's group statistics are computed once, on the
driver; they define the define-by-run Optuna space (gerne_ray.space), so no trial is proposed outside
beta's bounds. OptunaSearch (TPE, seeded with the spec's seed) suggests configurations, Tune limits
how many run at once (`search.max_concurrent`) and ASHA stops the weak ones early on the epoch count.
Every trial reports, each epoch, the best value so far of `search.metric` (`best_<metric>`): that is
what ASHA compares and what Optuna learns from, and a diverged trial reports a finite worst value.

`search.metric` may name several metrics ([val_gba, val_wga]): a multi-objective search. Each trial
is then represented by one epoch, its best by the first metric (as a single-metric search would
pick it), and reports `best_<m>` for every metric m: m's value at that epoch, the trial's point in
the metric plane. OptunaSearch gets the list of keys (Optuna's multi-objective TPE or NSGA-II,
`search.sampler`); Tune needs no metric of its own (no scheduler compares trials: ASHA takes one
metric, so the spec allows only FIFO with several). The result is the trials' Pareto front
(gerne_ray.pareto): `search.select` picks the best trial from it, the one the final seeds retrain.

`search.scheduler: pbt` replaces the searcher and ASHA with Population Based Training (`make_pbt`):
the first population is drawn from the same bounded space (`pbt_population`; Tune refuses a searcher
beside PBT), and every `search.perturbation_interval` epochs a trial in the bottom quantile restores a
top trial's checkpoint (`ray.tune.get_checkpoint()` in the trainable returns it) with the config
perturbed: lambda = c (beta + 1), c, lr and weight decay, clipped into their ranges, beta derived
(`explore_inside_bounds`), so beta never leaves its bounds for the new c. The restored history is the
donor's (each row names the trial that trained it, `trained_in_trial`), the loop keeps the spec's lr
and weight decay over the checkpoint's, and each row records the epoch's beta, c and lr.

A trial with one worker runs the training loop in-process inside its Tune trial; a trial with more
workers (or a GPU) drives a TorchTrainer whose rank 0 reports back through TuneReportCallback (the
Ray Train V2 pattern). The Optuna study lives in `optuna.journal` in the run folder (Optuna's
journal storage), so the searcher's knowledge survives a killed driver; Tune's experiment state
beside it resumes unfinished trials from their checkpoints (`gerne-ray resume RUN_DIR`). A trial that
fails (a node lost under it) is restarted from its latest checkpoint up to `scaling.max_failures`
times, on whichever node has room; each epoch's history row names the nodes it ran on (`node_ids`).

Speed (benchmarks/results/search_overhead.md): an in-process trial after the first starts in its
slot's live actor (`reuse_actors`: no new process, no imports); a single-worker trial checkpoints every
`search.checkpoint_every` epochs, at ASHA's rungs and at its last epoch (`checkpoint_policy`) and only
reports the others; Tune writes no CSV or TensorBoard file per result (`tune_settings`); and
`search.max_concurrent` null runs as many trials as the cluster fits, while one trial at a time on one
node reserves its CPUs (`scaling.cpus_per_worker` null; `with_concurrency`).

With `search.final_seeds: k` the best configuration is trained again with k new seeds (the spec's
seed + 1 ... + k; the searched seed is left out so the estimate is not the selection's lucky draw)
and best.json reports their mean and standard deviation.

Files in `<storage.path>/<name>/`: spec.json, trials.parquet (one row per trial: config, status,
selected epoch's metrics, per-group accuracies), trial_histories.parquet (every trial's epochs),
best.json (result.json's keys for the best trial, plus its config and the seed statistics; with
several metrics the Pareto front and how the best trial was selected from it),
report.md, report.html and plots/ (gerne_ray.report), optuna.journal, and Tune's and Train's own state.
"""

from __future__ import annotations

import contextlib
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
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from gerne_ray import groups, methods, pareto, pseudo, results, space
from gerne_ray.data.base import GroupedDataset
from gerne_ray.distributed import ensure_ray, read_checkpoint, user_error
from gerne_ray.errors import GerneError
from gerne_ray.loop import CHECKPOINT_FILE, Prepared, WorkerContext, save_state, train_loop
from gerne_ray.results import (
    METRIC_KEYS,
    OPTIM_KEYS,
    SEED_KEY,
    epoch_metrics,
    history_rows,
    metric_names,
    objective_key,
)
from gerne_ray.spec import JobSpec, SelectSpec, SpecLike, load_spec
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
# Tune's settings for a search's fit where the environment does not set them (`tune_settings`): no CSV
# or TensorBoard file written per result (JsonLoggerCallback keeps result.json, which Tune reads results
# from). Not TUNE_RESULT_BUFFER_LENGTH: in Ray 2.60 a buffer of results that ends on a checkpoint makes
# Tune schedule two trainings at once, and the last checkpoint of a trial is then never registered.
TUNE_SETTINGS = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
# how long a reused trial actor waits for its last trial's thread to end before it takes the next one:
# with Tune's default, 2 s, a thread slower to end (a loaded machine) would fail the next trial
REUSE_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
CHECKPOINT_EVERY = 5  # search.checkpoint_every's default (see spec.py)
TRIAL_CPU = 0.01  # a multi-worker trial's own CPU: it only drives its TorchTrainer (Tune refuses 0)
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

    def __init__(self, metric: str | list[str], checkpoint_every: int = 1,
                 checkpoint_epochs: frozenset[int] = frozenset()) -> None:
        import ray

        super().__init__()
        self.metric = metric  # one metric, or several (a multi-objective search)
        self.checkpoint_every, self.checkpoint_epochs = checkpoint_every, checkpoint_epochs  # the policy
        self.node_id = ray.get_runtime_context().get_node_id()
        self.trial_id = ray_tune.get_context().get_trial_id()
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    def load_checkpoint(self) -> dict | None:
        """The trial's latest checkpoint (when Tune restores it), or None."""
        checkpoint = ray_tune.get_checkpoint()
        return None if checkpoint is None else read_checkpoint(checkpoint)

    def _metrics(self, row: dict, history: list[dict]) -> dict:
        metrics = epoch_metrics(row, history, self.metric)
        first = metric_names(self.metric)[0]
        value = row.get(first)  # PBT compares trials by this epoch's value (finite: 0 when diverged)
        finite = isinstance(value, int | float) and math.isfinite(value)
        metrics[current_key(first)] = value if finite else 0.0
        return metrics

    def save(self, row: dict, state: dict) -> None:
        """Report the epoch's metrics with a checkpoint to Tune."""
        metrics = self._metrics(row, state["history"])
        with tempfile.TemporaryDirectory() as folder:
            save_state(Path(folder) / CHECKPOINT_FILE, state)
            ray_tune.report(metrics, checkpoint=ray_tune.Checkpoint.from_directory(folder))

    def report(self, row: dict, history: list[dict]) -> None:
        """Report the epoch's metrics to Tune, without a checkpoint."""
        ray_tune.report(self._metrics(row, history))


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
        os.environ.setdefault(REUSE_TIMEOUT_ENV, "600")  # read here, when Tune hands this actor a new trial
        pbt = spec.search.scheduler == "pbt"  # PBT checkpoints every epoch, each kept: none needs the best
        train_loop(tspec, prepared.for_spec(tspec),
                   TuneTrialContext(spec.search.metric, *checkpoint_policy(spec)), keep_best=not pbt)


def asha_rungs(spec: JobSpec) -> list[int]:
    """The epochs before the last where ASHA compares a trial with the others and may stop it (Ray's
    rungs: grace_period x reduction_factor^k); none with FIFO or PBT."""
    s = spec.search
    if s.scheduler != "asha":
        return []
    rungs, epoch = [], s.grace_period
    while epoch < spec.optim.epochs:
        rungs.append(epoch)
        epoch *= s.reduction_factor
    return rungs


def checkpoint_policy(spec: JobSpec) -> tuple[int, frozenset[int]]:
    """A single-worker trial's checkpoints: every search.checkpoint_every epochs and at ASHA's rungs (the
    loop adds the last epoch), so a trial ASHA stops ends on a checkpoint that holds all its epochs;
    every epoch under PBT (an exploit copies another trial's latest checkpoint).

    checkpoint_every null: CHECKPOINT_EVERY, or 1 when scaling.max_failures asks for restarts (a
    restart after a lost node then redoes one epoch at most)."""
    if spec.search.scheduler == "pbt":
        return 1, frozenset()
    every = spec.search.checkpoint_every
    if every is None:
        every = 1 if spec.scaling.max_failures else CHECKPOINT_EVERY
    return every, frozenset(asha_rungs(spec))


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

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: OptunaSearch would write each epoch's value to the journal (an fsync per epoch) for
        Optuna's pruners, which Tune leaves off; each trial's epochs are in trial_histories.parquet."""


def make_searcher(spec: JobSpec, stats: groups.GroupStats, run_dir: Path,
                  ranking: pseudo.Ranking | None = None, num_attributes: int = 2) -> JournalOptunaSearch:
    """OptunaSearch over the bounded space: TPE (or NSGA-II) seeded by the spec, the study in a journal file.

    With several metrics the study is multi-objective: one `best_<metric>` key and direction per metric.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ranking is not None:
        t_range(spec.search, ranking)
    metrics = spec.search.metrics
    keys = [objective_key(m) for m in metrics]
    searcher = JournalOptunaSearch(
        space=functools.partial(optuna_space, stats=stats, search=spec.search, ranking=ranking,
                                num_attributes=num_attributes, params=spec.method),
        metric=keys if len(keys) > 1 else keys[0],
        mode=["max"] * len(keys) if len(keys) > 1 else "max",
        sampler=make_sampler(spec),
        study_name=spec.name,
        storage=_journal_storage(run_dir / JOURNAL_FILE),
    )
    searcher.journal = str(run_dir / JOURNAL_FILE)
    return searcher


def make_sampler(spec: JobSpec) -> optuna.samplers.BaseSampler:
    """Optuna's sampler, seeded by the spec: TPE (multi-objective with several metrics) or NSGA-II."""
    if spec.search.sampler == "nsga2":  # generations of a quarter of the budget: 16 trials make 4 of 4
        population = max(4, min(50, spec.search.num_samples // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def trial_retries(spec: JobSpec) -> ray_tune.FailureConfig:
    """Tune's restarts of a failed trial from its latest checkpoint: `scaling.max_failures` of them."""
    # for Ray Train trials too: their worker-group restarts cannot save a trial whose driver's node was lost
    return ray_tune.FailureConfig(max_failures=spec.scaling.max_failures)


def current_key(metric: str) -> str:
    """The reported key holding this epoch's value of `metric` (what PBT compares; 0 for a diverged epoch)."""
    return f"last_{metric}"


def pbt_ranges(spec: JobSpec, stats: groups.GroupStats) -> dict[str, tuple[float, float]]:
    """What PBT perturbs and each value's range: lambda = c (beta + 1) (the search's interval, which
    keeps beta inside its bounds for every c), c (a range, or several values), lr and weight decay."""
    s = spec.search
    ranges = {"lambda": space.lambda_range(stats, s.bounds, s.margin)}
    cs = s.space.c
    if isinstance(cs, list) and len(cs) > 1:
        ranges["c"] = (min(cs), max(cs))
    elif not isinstance(cs, list) and cs.low < cs.high:
        ranges["c"] = (cs.low, cs.high)
    for key in OPTIM_KEYS:
        if getattr(s.space, key) is not None:
            ranges[key] = tuple(getattr(s.space, key))
    return ranges


def explore_inside_bounds(config: dict, ranges: dict[str, tuple[float, float]]) -> dict:
    """PBT's explored config made valid: each perturbed value clipped into its range, then beta derived
    from lambda and c (a perturbed c moves beta's bounds; lambda's interval is the same for every c)."""
    out = dict(config)
    for key, (lo, hi) in ranges.items():
        out[key] = min(max(float(out[key]), lo), hi)
    out["beta"] = groups.beta_of(out["lambda"], out["c"])
    return out


def pbt_population(spec: JobSpec, stats: groups.GroupStats) -> list[dict]:
    """The first configurations of a PBT search: num_samples independent draws (Optuna's RandomSampler,
    seeded by the spec) from the same bounded space as the TPE search, in trial order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.seed), direction="maximize")
    configs = []
    for _ in range(spec.search.num_samples):
        trial = study.ask()
        drawn = optuna_space(trial, stats, spec.search, spec.method)
        config = {**trial.params, **drawn}
        config.pop("trial_number")  # a PBT exploit copies a config: the trial's id says its number
        configs.append(config)
    return configs


class EpochPBT(PopulationBasedTraining):
    """Ray's PBT, leaving a trial's last epoch alone (a copy of a finished trial would train nothing), and
    resumable in synchronous mode.

    Resumed, Tune builds a new scheduler: Ray's PBT would start every restored trial's clock at 0, and in
    synchronous mode, once each trial had reported its first epoch after the restore (epoch 5, say), set
    the next synchronisation point to the latest of those epochs, which no waiting trial is below: no trial
    would ever be chosen to run again (Ray 2.60). So a restored trial's clock starts at its last reported
    epoch, and when every live trial waits at or past the synchronisation point, the point moves on.
    """

    def __init__(self, epochs: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epochs = epochs

    def on_trial_add(self, tune_controller, trial) -> None:
        """PBT's bookkeeping, with a restored trial's clock at its last reported epoch."""
        super().on_trial_add(tune_controller, trial)
        # the recorded result, not `trial.last_result`, which for a new trial fetches a default one
        last = trial.run_metadata.last_result.get(self._time_attr)
        if isinstance(last, int | float) and last > 0:
            state = self._trial_state[trial]
            state.last_train_time = state.last_perturbation_time = last

    def choose_trial_to_run(self, tune_controller):
        """PBT's choice; in synchronous mode, when every live trial waits at or past the synchronisation
        point (after a restore), the point moves to the earliest of them plus the interval first."""
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is not None or not self._synch:
            return chosen
        from ray.tune.experiment import Trial

        live = list(tune_controller.get_live_trials())
        waiting = [t for t in live if t.status in (Trial.PENDING, Trial.PAUSED)]
        if waiting and len(waiting) == len(live):
            earliest = min(self._trial_state[t].last_train_time for t in waiting)
            if earliest >= self._next_perturbation_sync:
                self._next_perturbation_sync = earliest + self._perturbation_interval
                return super().choose_trial_to_run(tune_controller)
        return None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """PBT's step, except at the last epoch."""
        if result.get(self._time_attr, 0) >= self.epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def make_pbt(spec: JobSpec, stats: groups.GroupStats):
    """Population Based Training on the epoch count: every search.perturbation_interval epochs a trial in
    the bottom quantile restores one of the top quantile's checkpoints with its config perturbed
    (lambda, c, lr and weight decay where searched; `explore_inside_bounds`), compared by this epoch's
    validation metric. Never at the last epoch: a copy of a finished trial would train nothing."""
    s = spec.search
    ranges = pbt_ranges(spec, stats)
    mutations: dict = {"lambda": ray_tune.uniform(*ranges["lambda"])}
    cs = s.space.c
    if "c" in ranges:
        mutations["c"] = sorted(cs) if isinstance(cs, list) else ray_tune.uniform(cs.low, cs.high)
    for key in OPTIM_KEYS:
        if key in ranges:
            mutations[key] = ray_tune.loguniform(*ranges[key])
    return EpochPBT(
        spec.optim.epochs, time_attr="epoch", metric=current_key(s.primary), mode="max",
        perturbation_interval=s.perturbation_interval, hyperparam_mutations=mutations,
        quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability, synch=s.synch,
        custom_explore_fn=functools.partial(explore_inside_bounds, ranges=ranges),
    )


def make_scheduler(spec: JobSpec, stats: groups.GroupStats | None = None):
    """ASHA on the epoch count (`search.scheduler: asha`), FIFO, or PBT (`make_pbt`, which needs stats)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.search.scheduler == "pbt":
        if stats is None:
            raise ValueError("make_scheduler: PBT's ranges come from the training groups; pass stats")
        return make_pbt(spec, stats)
    if spec.search.scheduler == "fifo" or spec.search.grace_period >= spec.optim.epochs:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", metric=objective_key(spec.search.metric), mode="max",
        max_t=spec.optim.epochs, grace_period=spec.search.grace_period,
        reduction_factor=spec.search.reduction_factor,
    )


def trial_resources(spec: JobSpec) -> dict[str, float]:
    """What one trial holds, in Ray's resource names: its CPUs, or its workers' CPUs (and GPUs) and the
    trial's own share of a CPU (`_trainable`)."""
    s = spec.scaling
    if not s.distributed:
        return {"CPU": s.worker_cpus}
    need = {"CPU": s.num_workers * s.worker_cpus + TRIAL_CPU}
    if s.use_gpu:
        need["GPU"] = s.num_workers * (s.gpus_per_worker if s.gpus_per_worker is not None else 1)
    return need


def trials_that_fit(need: dict[str, float], capacity: dict[str, float]) -> int:
    """How many trials holding `need` each the resources `capacity` run at once (at least 1)."""
    counts = [math.floor(capacity.get(key, 0) / amount + 1e-9) for key, amount in need.items() if amount > 0]
    return max(1, min(counts, default=1))


def cluster_capacity() -> dict[str, float]:
    """The Ray cluster's resources; for an autoscaling cluster that publishes its node types (autoscaler
    v2), the most they add up to."""
    import ray

    capacity = dict(ray.cluster_resources())
    try:  # Ray's own Train V2 reads it the same way; None without an autoscaler's config
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # a private API: without it, the resources there are now
        most = {}
    for key, amount in most.items():
        capacity[key] = max(capacity.get(key, 0), amount)
    return capacity


def one_node_cpus(nodes: int, cpus: float, most: float, machine: int) -> float | None:
    """What a trial alone on the cluster reserves: the CPUs of its one node (`cpus`), at most this
    machine's (`machine`: a local cluster may declare more than there are); None on a cluster of several
    `nodes`, or one an autoscaler may grow to `most` CPUs."""
    if nodes != 1 or most > cpus:
        return None
    return float(max(1, min(math.floor(cpus), machine)))


def lone_trial_cpus() -> float | None:
    """one_node_cpus of the cluster Ray is connected to."""
    import ray

    alive = sum(bool(n.get("Alive")) for n in ray.nodes())
    return one_node_cpus(alive, ray.cluster_resources().get("CPU", 0), cluster_capacity().get("CPU", 0),
                         os.cpu_count() or 1)


def with_concurrency(spec: JobSpec) -> JobSpec:
    """The spec with search.max_concurrent and scaling.cpus_per_worker resolved.

    max_concurrent: as given, or (null) the trials the cluster fits. cpus_per_worker: as given, or (null)
    1; but in-process trials run one at a time (not PBT, whose population runs as the CPUs fit) on a
    one-node cluster reserve its CPUs: Ray runs a trial's torch with as many threads as it reserves, so a
    1-CPU trial would leave the others idle (1.7x the wall time of the same trials on 2 CPUs, measured
    on real Colored MNIST: benchmarks/results/search_overhead_colored_mnist.md).
    """
    s, scaling = spec.search, spec.scaling
    n = s.max_concurrent
    if n is None:
        n = trials_that_fit(trial_resources(spec), cluster_capacity())
    cpus = scaling.cpus_per_worker
    if cpus is None:
        alone = n == 1 and s.scheduler != "pbt" and not scaling.distributed
        cpus = (lone_trial_cpus() if alone else None) or 1.0
    return spec.model_copy(update={"search": s.model_copy(update={"max_concurrent": n}),
                                   "scaling": scaling.model_copy(update={"cpus_per_worker": cpus})})


def _trainable(spec: JobSpec, prepared: Prepared):
    job = spec.model_dump(mode="json")
    job["storage"]["path"] = spec.folder.ray_storage  # absolute: trials run in other working directories
    s = spec.scaling
    # A multi-worker trial only drives its TorchTrainer: its workers hold the CPUs, it needs almost none.
    resources = {"cpu": TRIAL_CPU} if s.distributed else {"cpu": s.worker_cpus}
    trainable = ray_tune.with_parameters(run_trial, job=job, prepared=prepared, storage=storage_settings())
    return ray_tune.with_resources(trainable, resources)


class Progress(Callback):
    """Prints one line per finished trial: its configuration, best metric and how it ended."""

    def __init__(self, label: str, total: int, metric: str | list[str], epochs: int) -> None:
        self.label, self.total, self.metric, self.epochs = label, total, metric, epochs
        self.start = time.perf_counter()

    def _line(self, trials: list, trial, outcome: str) -> None:
        # this trial is not marked finished yet; restored finished trials count too
        done = 1 + sum(t.status in ("TERMINATED", "ERROR") and t is not trial for t in trials)
        r, cfg = trial.last_result or {}, trial.config
        objectives = {m: r.get(objective_key(m)) for m in metric_names(self.metric)}
        epoch = r.get("epoch", 0)
        if outcome == "completed" and r.get("status") == "diverged":
            outcome = "diverged"
        elif outcome == "completed" and epoch < self.epochs:
            outcome = f"stopped at epoch {epoch}"
        shown = " ".join(f"{m} {100 * v:6.2f}" for m, v in objectives.items() if v is not None)
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


def reuse_actors(spec: JobSpec) -> bool:
    """Whether a trial after the first starts in its slot's live actor (no new process, no imports):
    for in-process trials. A trial driving a TorchTrainer gets a fresh one: how its thread, stopped by
    a scheduler inside the trainer's fit, would end is untested, and its trainer's start dwarfs it."""
    return not spec.scaling.distributed


@contextlib.contextmanager
def tune_settings():
    """TUNE_SETTINGS in the environment while a fit runs, each where the environment does not set it."""
    added = {k: v for k, v in TUNE_SETTINGS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _fit(tuner_args: dict, location: str, folder: RunFolder, trainable, expected: int):
    """Resume the Tune experiment at location if it has state, else start it; refuse an interrupted one.

    Tune answers SIGINT (Ctrl+C) or SIGUSR1 by saving the experiment and returning the trials as they
    stand: then fewer than `expected` trials have finished, and nothing may be summarised from them.
    """
    if not ray_tune.Tuner.can_restore(location):
        with tune_settings():
            grid = ray_tune.Tuner(trainable, **tuner_args).fit()
    else:
        log.warning("resuming the experiment in %s", location)
        _restoring["run_dir"] = folder.local
        try:
            tuner = ray_tune.Tuner.restore(location, trainable, resume_unfinished=True, resume_errored=True)
            with tune_settings():
                grid = tuner.fit()
        finally:
            _restoring.clear()
    # Interrupted, Tune snapshots the experiment, then stops the trials it was running and marks them
    # TERMINATED in the grid it returns; the snapshot keeps them unfinished
    state = ray_tune.ExperimentAnalysis(location)
    finished = sum(t.status in ("TERMINATED", "ERROR") for t in state.trials)
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
    pbt = s.scheduler == "pbt"
    if pbt:  # Tune refuses a searcher beside PBT: the first population is drawn here, in bounds, seeded
        from ray.tune.search.basic_variant import BasicVariantGenerator

        population = pbt_population(spec, prepared.stats)
        searcher = BasicVariantGenerator(points_to_evaluate=population)
    else:
        searcher = make_searcher(spec, prepared.stats, folder.local, prepared.ranking,
                                 max(prepared.dataset.num_attributes, 2))
    args = {
        # each preset point needs its keys in the space: the population's own values, as choices
        **({"param_space": {k: ray_tune.choice(sorted({c[k] for c in population})) for k in population[0]}}
           if pbt else {}),
        "tune_config": ray_tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(spec, prepared.stats),
            num_samples=s.num_samples,
            # PBT: the whole population exists at once (Tune runs what the CPUs fit; PBT pauses in turn)
            max_concurrent_trials=None if pbt else s.max_concurrent,
            reuse_actors=reuse_actors(spec),
            trial_dirname_creator=trial_dirname,
        ),
        "run_config": ray_tune.RunConfig(
            name=spec.name,
            storage_path=folder.ray_storage,
            # PBT: a paused trial may restore a donor's checkpoint epochs later: every checkpoint is kept
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=None if pbt else KEEP_CHECKPOINTS),
            failure_config=trial_retries(spec),
            callbacks=[JsonLoggerCallback(), Progress("trial", s.num_samples, s.metric, spec.optim.epochs),
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
                                           reuse_actors=reuse_actors(spec),
                                           trial_dirname_creator=trial_dirname),
        "run_config": ray_tune.RunConfig(
            name=FINAL_DIR,
            storage_path=folder.location,
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=trial_retries(spec),
            callbacks=[JsonLoggerCallback(),
                       Progress("seed", len(seeds), spec.search.metric, spec.optim.epochs)],
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
                       trial_number=result.config.get("trial_number", creation_index(trial_id)
                                                      if stage == "search" else tspec.seed),
                       searched=[k for k in config if k != SEED_KEY])
        summary["epochs_trained"] = reported_epochs(result) or len(history)
        summary["history"] = history
        trials.append(summary)
    return sorted(trials, key=lambda t: t["trial_number"])


def creation_index(trial_id: str) -> int:
    """The order in which Tune created a trial (its id's suffix, e.g. 3 for 5421d_00003): PBT trials'
    number, as their configs are copied from one trial to another."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def trained_epochs(trial: dict) -> int:
    """Epochs the trial trained: its reports to Tune. Not its history's length under PBT, where an exploit
    replaces the history with the donor's (its epochs so far dropped, the donor's counted by the donor)."""
    return trial.get("epochs_trained", len(trial["history"]))


def reported_epochs(result) -> int | None:
    """How many epochs a trial reported to Tune (None when Tune kept no record)."""
    try:
        frame = result.metrics_dataframe
    except Exception:  # noqa: BLE001 - a missing or damaged progress file: no record
        return None
    return None if frame is None else len(frame)


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


def selection(trials: list[dict], metric: str | list[str],
              select: SelectSpec | None = None) -> pareto.Selection:
    """The best trial as `search.select` picks it from the Pareto front of the metrics (with one metric:
    the highest, the earliest trial on ties), whether it meets select's floors, and a note when not."""
    metrics = metric_names(metric)
    scored = [t for t in trials if t["status"] != "error" and pareto.usable(t, metrics)]
    if not scored:
        reasons = "; ".join(sorted({t["reason"] for t in trials if t["reason"]}))[:500]
        raise GerneError(f"search: no trial produced a finite {' and '.join(metrics)} "
                         f"({reasons or 'no trial ran'}); check the spec's optim settings (a smaller "
                         "optim.lr?) and the trials' reasons")
    select = select or SelectSpec()
    return pareto.select(pareto.front_trials(scored, metrics), metrics, select.maximize, select.subject_to)


def pick_best(trials: list[dict], metric: str | list[str], select: SelectSpec | None = None) -> dict:
    """The best trial: the highest selected validation metric (earliest trial on ties), or with several
    metrics the trial of their Pareto front that `select` (search.select) picks."""
    return selection(trials, metric, select).trial


def front_entry(trial: dict) -> dict:
    """One trial of best.json's pareto_front: its id, selected epoch, configuration, val and test metrics."""
    return {"trial_id": trial["trial_id"], "trial_number": trial["trial_number"], "status": trial["status"],
            "best_epoch": trial["best_epoch"],
            "config": {k: trial[k] for k in config_keys([trial]) if trial.get(k) is not None},
            **{k: trial[k] for k in METRIC_KEYS}}


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


def pareto_front(spec: JobSpec, trials: list[dict]) -> list[dict] | None:
    """The trials on the Pareto front of search.metric, in trial order (failed ones left out); None with
    one metric."""
    metrics = spec.search.metrics
    if len(metrics) == 1:
        return None
    return pareto.front_trials([t for t in trials if t["status"] != "error"], metrics)


def best_summary(spec: JobSpec, chosen: pareto.Selection, trials: list[dict], final: list[dict],
                 front: list[dict] | None) -> dict:
    """best.json: the best trial (`chosen`, as `selection` picked it) keyed as result.json, its
    configuration, the search and seed statistics; with several metrics the Pareto front (`front`, from
    `pareto_front`) and `selection`: the rule that picked the best trial from it, whether the trial meets
    its floors and a note when it does not."""
    s = spec.search
    best = chosen.trial
    out = {k: v for k, v in best.items() if k not in ("history", "stage", "trial_number")}
    out["name"] = spec.name
    out["best_config"] = {k: best[k] for k in config_keys([best]) if best.get(k) is not None}
    out["search"] = {
        "trials": len(trials),
        **{s: sum(t["status"] == s for t in trials) for s in ("completed", "stopped", "diverged", "error")},
        "epochs_spent": sum(trained_epochs(t) for t in trials),
        "metric": spec.search.metric,
        "bounds": spec.search.bounds,
        "margin": spec.search.margin,
        "scheduler": spec.search.scheduler,
        "sampler": s.sampler,
        "max_concurrent": s.max_concurrent,  # as resolved when the search started (`with_concurrency`)
    }
    out["pareto_front"] = None if front is None else [front_entry(t) for t in front]
    out["selection"] = {"metrics": s.metrics, "maximize": s.select.maximize or s.primary,
                        "subject_to": dict(s.select.subject_to), "trial_id": chosen.trial["trial_id"],
                        "met": chosen.met, "note": chosen.note}
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
        method.check_search(prepared.stats, spec.search, spec.method)
    if run_dir is not None:  # resume a folder that may have moved: its name and parent rule
        moved = RunFolder.at(run_dir)
        spec = load_spec(spec, [f"name={moved.name}", f"storage.path={moved.storage}"])
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune tables: Progress prints a line per trial
    ensure_ray(spec)  # the cluster must fit a trial before anything is written
    folder = spec.folder
    folder.check_writable()
    claim_run_dir(spec)
    spec = with_concurrency(spec)  # after claim_run_dir: spec.json keeps null, a resume counts afresh
    run_dir = folder.local
    prepared = run_first_stages(spec, prepared, folder)  # once per job: every trial cuts its own t
    s = spec.search
    goal = " and ".join(s.metrics) + (" (their Pareto front)" if len(s.metrics) > 1 else "")
    print(f"gerne-ray tune {spec.name}: {s.num_samples} trials of {spec.method.name} on "
          f"{spec.data.dataset}, maximising {goal}; results in {folder.location}", flush=True)
    trials = collect(spec, prepared, search(spec, prepared, folder), folder, "search")
    chosen = selection(trials, s.metric, s.select)
    best = chosen.trial
    front = pareto_front(spec, trials)
    if front is not None:
        floors = "".join(f", {m} >= {v:.4g}" for m, v in s.select.subject_to.items())
        print(f"Pareto front of {', '.join(s.metrics)}: {len(front)} of {len(trials)} trials; best by "
              f"search.select (maximize {s.select.maximize or s.primary}{floors}): trial {best['trial_id']}",
              flush=True)
    if chosen.note:
        print(f"search.select: {chosen.note}", flush=True)
    final: list[dict] = []
    if spec.search.final_seeds:
        final = collect(spec, prepared, run_final(spec, prepared, folder, best), folder, "final")
    summary = best_summary(spec, chosen, trials, final, front)
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

