"""Running one configuration: prepare the data, run the first stage, train in-process or on Ray Train.

`train(spec)` is the API for one run: it loads the dataset and its training group statistics
(`prepare`), claims the run folder, runs the method's first stage and, with unknown attributes,
the biased model's (gerne_ray.stage1, once per job), then the training loop (gerne_ray.loop)
in-process for one CPU worker or on Ray Train workers (gerne_ray.distributed), and writes
`history.parquet` and `result.json` (`summarize`) under the run folder.
"""

from __future__ import annotations

from pathlib import Path

from gerne_ray import groups, methods, metrics, pseudo, results
from gerne_ray.data import load_dataset
from gerne_ray.data.base import TRAIN, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import CHECKPOINT_FILE, Prepared, WorkerContext, model_for, train_loop, training_stats
from gerne_ray.models import allocation_failures_as
from gerne_ray.progress import EpochProgress
from gerne_ray.results import EVAL_SPLITS, history_rows, select_epoch
from gerne_ray.sampling import rank_share
from gerne_ray.spec import JobSpec, SpecLike, load_spec


def prepare(spec: JobSpec, dataset: GroupedDataset | None = None, check_method: bool = True) -> Prepared:
    """Load the dataset, compute the training split's group statistics and check the method against them.

    A search (`check_method=False`) draws the searched values itself: the spec's fixed ones are unused.
    """
    rank_share(spec.optim.batch_size_per_class, 0, spec.scaling.num_workers)  # B >= W, before any worker
    if dataset is None:
        fix = (f"{spec.data.dataset} does not fit this machine's memory; use a machine with more memory "
               "(or a lower data.max_length for text)")
        with allocation_failures_as("data.dataset", fix):
            dataset = load_dataset(spec.data)
    # the architecture must fit the data: fail here, before a run folder or a worker exists
    model_for(spec, dataset, pretrained=False)
    method = methods.get(spec.method.name)
    dataset = method.prepare_dataset(spec.method, dataset)
    if spec.data.attributes == "unknown":  # nothing below sees the labels the setting calls unknown
        truth = dataset if spec.data.attribute_labels == "train_val" else None
        dataset = pseudo.mask(dataset, spec.data.attribute_labels)
        eval_stats = None
        if truth is not None:
            idx = truth.indices(TRAIN)
            eval_stats = groups.GroupStats.from_labels(truth.y[idx], truth.a[idx], truth.num_classes,
                                                       max(truth.num_attributes, 2))
        return Prepared(dataset, training_stats(dataset), None, eval_stats, truth, unknown=True)
    stats = training_stats(dataset)
    if check_method:
        method.check(spec.method, stats)
    return Prepared(dataset, stats)


def run_first_stages(spec: JobSpec, prepared: Prepared, folder) -> Prepared:
    """Once per job: the biased model's ranking (unknown attributes, a method using groups) and the
    method's own first stage; both cached in the run folder and shared by every trial."""
    from gerne_ray import stage1

    method = methods.get(spec.method.name)
    if prepared.unknown and method.uses_groups:
        prepared.ranking = stage1.biased_ranking(spec, prepared.dataset, folder)
    first = method.first_stage(spec)
    if first is not None:
        prepared.stage1 = first.run(spec, prepared.dataset, folder)
    return prepared


def absent_groups(dataset: GroupedDataset, split: int) -> list[list[int]]:
    """The (y, a) groups with no samples in a split: left out of that split's metrics."""
    idx = dataset.indices(split)
    y, a = dataset.y[idx], dataset.a[idx]
    table = metrics.group_table(y, a, y, dataset.num_classes, dataset.num_attributes)
    return [list(g) for g in table.missing]


def summarize(spec: JobSpec, prepared: Prepared, history: list[dict]) -> dict:
    """result.json's content: config, status, selected epoch and its metrics keyed <split>_<metric>."""
    metric = spec.search.primary  # of several metrics, the first selects the epoch
    best = select_epoch(history, metric)
    last = history[-1] if history else {"status": "ok", "reason": ""}
    method = methods.get(spec.method.name)
    result: dict = {
        "name": spec.name,
        "method": spec.method.name,
        "status": "diverged" if last["status"] == "diverged" else "completed",
        "reason": last["reason"],
        "selection_metric": metric,
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": sum(r["status"] == "ok" for r in history),
        "params": spec.method.model_dump(mode="json"),
        **method.describe(spec.method, prepared.stats),
    }
    for split in EVAL_SPLITS:
        for name in metrics.METRIC_NAMES:
            result[f"{split}_{name}"] = best[f"{split}_{name}"] if best else None
        result[f"{split}_groups"] = best[f"{split}_groups"] if best else []
        result[f"{split}_missing_groups"] = absent_groups(prepared.dataset, EVAL_SPLITS[split])
    result["train_groups"] = prepared.stats.to_rows()
    if prepared.ranking is not None:  # unknown attributes: the pseudo-groups of method.t
        result["t"] = spec.method.t
        if prepared.truth is not None:  # true training attributes exist: how good are the pseudo-groups
            result.update(pseudo.precision_recall(prepared.truth, prepared.ranking, spec.method.t))
    result["config"] = spec.model_dump(mode="json")
    return result


def claim_run_dir(spec: JobSpec) -> None:
    """Refuse to mix two configurations in one run folder; record this one's spec there.

    A rerun of the same spec (optim.epochs may grow) resumes the run from its latest checkpoint.
    """
    folder = spec.folder
    folder.pull("spec.json")
    path = folder.local / "spec.json"
    mine = spec.model_dump(mode="json")
    if path.is_file():
        fix = f"give this job another name, or move the folder {folder.location} away"
        theirs = read_spec_json(path, fix)
        if theirs == mine:
            return  # the same run again: nothing to write
        try:  # written by an older version: compare with its defaults filled in as today's
            theirs = JobSpec.model_validate(theirs).model_dump(mode="json")
        except ValueError:
            pass
        differ = [k for k in _flat_keys(mine) | _flat_keys(theirs)
                  if k != "optim.epochs" and _get(mine, k) != _get(theirs, k)]
        if differ:
            raise GerneError(
                f"storage.path: the run folder {folder.location} holds a run of another configuration "
                f"(it differs in {', '.join(sorted(differ))}); give this job another name, or move that "
                "folder away to start over"
            )
    results.write_json(path, mine)
    folder.push("spec.json")


def read_spec_json(path: Path, fix: str) -> dict:
    """A run folder's spec.json as a dict, or one line saying it cannot be read and `fix`."""
    try:
        raw = results.read_json(path)
    except (OSError, ValueError) as err:
        raise GerneError(f"{path}: not a readable spec.json ({str(err)[:200]}); {fix}") from None
    if not isinstance(raw, dict):
        raise GerneError(f"{path}: not a job spec (a {type(raw).__name__}, not a mapping); {fix}")
    return raw


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in d.items():
        keys |= _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def _get(d: dict, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def train(spec: SpecLike, overrides: list[str] | None = None, dataset: GroupedDataset | None = None,
          progress: EpochProgress | None = None) -> dict:
    """Run one configuration, resuming its run folder's checkpoint if any; write and return the result.

    One worker without a GPU trains in-process; `scaling.num_workers > 1` or `scaling.use_gpu` runs
    Ray Train workers (gerne_ray.distributed). progress: told of each epoch of an in-process run.
    """
    spec = load_spec(spec, overrides)
    prepared = prepare(spec, dataset)
    if spec.scaling.distributed:  # the cluster must fit the workers before anything is written
        from gerne_ray.distributed import ensure_ray

        ensure_ray(spec)
    folder = spec.folder
    folder.check_writable()
    claim_run_dir(spec)
    prepared = run_first_stages(spec, prepared, folder).for_spec(spec)
    if prepared.ranking is not None:  # beta's bounds come from method.t's pseudo-groups
        methods.get(spec.method.name).check(spec.method, prepared.stats)
    if spec.scaling.distributed:
        from gerne_ray.distributed import fit_distributed

        history = fit_distributed(spec, prepared)
    else:
        folder.pull(CHECKPOINT_FILE)
        ctx = WorkerContext(checkpoint_dir=folder.local, after_save=lambda: folder.push(CHECKPOINT_FILE))
        o = spec.optim
        fix = (f"lower optim.batch_size_per_class (now {o.batch_size_per_class}), optim.eval_batch_size "
               f"(now {o.eval_batch_size}) or model.hidden; rerunning resumes from the last checkpoint")
        with allocation_failures_as("optim.batch_size_per_class", fix):  # a step or an evaluation's batch
            history = train_loop(spec, prepared, ctx, progress=progress)
    result = summarize(spec, prepared, history)
    results.write_rows_parquet(folder.local / "history.parquet", history_rows(history))
    results.write_json(folder.local / "result.json", result)
    folder.push("history.parquet", "result.json")
    return result
