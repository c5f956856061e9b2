"""The one training loop: erm, resample, reweight or gerne, from a spec.

`train_loop` is the same code in-process and on Ray Train workers. What differs between the two
lives in a WorkerContext: rank and world size, the device, how a model is wrapped for data
parallelism, how tensors are all-reduced, and where checkpoints go. The base class is one
in-process worker with its checkpoint in the run folder; `gerne_ray.distributed` has Ray Train's.
`train` runs a spec (in-process, or on Ray Train when `scaling` asks for it) and writes
`history.parquet` and `result.json` under the run folder.

Data parallelism: with W workers and B samples per class, rank r draws B // W + (1 if r < B % W)
samples per class of each batch from its own random stream. Each rank's mean loss is scaled by
(its samples x W / all samples), so that DDP's average over ranks is the mean over the union of
the ranks' batches even when W does not divide B. Evaluation is sharded: each rank predicts every
W-th sample and the per-group counts are all-reduced, so every rank holds the same metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gerne_ray import groups, metrics, results
from gerne_ray.data import load_dataset
from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.diagnostics import paired_gradients
from gerne_ray.errors import GerneError
from gerne_ray.models import build_model
from gerne_ray.sampling import PairedSampler, rank_share
from gerne_ray.spec import JobSpec, SpecLike, load_spec
from gerne_ray.step import StepLosses, gerne_losses, weighted_loss

log = logging.getLogger(__name__)
EVAL_SPLITS = {"val": VAL, "test": TEST}
CHECKPOINT_FILE = "checkpoint.pt"
LOSS_KEYS = ("loss", "loss_b", "loss_lb")
DIAGNOSTIC_KEYS = ("grad_norm_b", "grad_norm_lb", "grad_cosine")


class WorkerContext:
    """One in-process worker: no collectives; checkpoints go to `checkpoint_dir` when given."""

    def __init__(self, device: torch.device | None = None, checkpoint_dir: Path | None = None,
                 after_save: Callable[[], None] | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or torch.device("cpu")
        self.checkpoint_dir = checkpoint_dir
        self.after_save = after_save

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the model to this worker's device (Ray Train also wraps it in DDP)."""
        return model.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all workers."""
        return tensor

    def all_gather(self, obj: object) -> list:
        """Every worker's obj, in rank order."""
        return [obj]

    def load_checkpoint(self) -> dict | None:
        """The latest checkpoint's state, or None for a fresh run."""
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        return load_state(path) if path is not None and path.is_file() else None

    def save(self, row: dict, state: dict) -> None:
        """Record one finished epoch: its history row and the state to resume from."""
        if self.checkpoint_dir is not None:
            save_state(self.checkpoint_dir / CHECKPOINT_FILE, state)
            if self.after_save is not None:
                self.after_save()


def save_state(path: Path, state: dict) -> None:
    """Write a checkpoint state atomically."""
    results.atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read a checkpoint state (tensors and plain Python values only: weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise GerneError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); delete it to restart "
            "the run from epoch 1, or give this job another name"
        ) from None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class Prepared:
    """What every run of a job shares: the dataset and its training group statistics."""

    dataset: GroupedDataset
    stats: groups.GroupStats
    # unknown attributes (gerne_ray.pseudo): the biased model's ranking, the true training groups
    # for weighted_avg / minority where they exist, and the true dataset for precision / recall
    ranking: object | None = None
    eval_stats: groups.GroupStats | None = None
    truth: GroupedDataset | None = None

    def for_spec(self, spec: JobSpec) -> Prepared:
        """What a run with this spec trains on: with unknown attributes, the pseudo-groups of method.t."""
        if self.ranking is None:
            return self
        from gerne_ray import pseudo

        dataset = pseudo.with_pseudo_groups(self.dataset, self.ranking, spec.method.t)
        return Prepared(dataset, training_stats(dataset), self.ranking, self.eval_stats, self.truth)

    @property
    def metric_stats(self) -> tuple:
        """Training counts and aligned groups for weighted_avg and minority (None, None if unknown)."""
        stats = self.eval_stats if self.ranking is not None else self.stats
        return (stats.counts, stats.aligned) if stats is not None else (None, None)


def model_for(spec: JobSpec, dataset: GroupedDataset, pretrained: bool | None = None) -> nn.Module:
    """The spec's model for the dataset's inputs and classes."""
    m = spec.model
    return build_model(
        m.arch, dataset.input_shape, dataset.num_classes, m.pretrained if pretrained is None else pretrained,
        m.hidden, m.name, getattr(dataset.inputs, "vocab_size", None),
        getattr(dataset.inputs, "pad_token_id", None), getattr(dataset.inputs, "sep_token_id", None),
    )


def training_stats(dataset: GroupedDataset) -> groups.GroupStats:
    """Group statistics of the dataset's training split."""
    train_idx = dataset.indices(TRAIN)
    if len(train_idx) == 0:
        raise GerneError(f"data.dataset: {dataset.name} has no training samples (split 0)")
    return groups.GroupStats.from_labels(
        dataset.y[train_idx], dataset.a[train_idx], dataset.num_classes, dataset.num_attributes
    )


def prepare(spec: JobSpec, dataset: GroupedDataset | None = None, check_beta: bool = True) -> Prepared:
    """Load the dataset, compute the training split's group statistics and check beta against them.

    A search (`check_beta=False`) draws beta inside the bounds itself: the spec's fixed beta is unused.
    """
    rank_share(spec.optim.batch_size_per_class, 0, spec.scaling.num_workers)  # B >= W, before any worker
    dataset = dataset if dataset is not None else load_dataset(spec.data)
    # the architecture must fit the data: fail here, before a run folder or a worker exists
    model_for(spec, dataset, pretrained=False)
    if spec.data.attributes == "unknown":  # nothing below sees the labels the setting calls unknown
        from gerne_ray import pseudo

        truth = dataset if spec.data.attribute_labels == "train_val" else None
        dataset = pseudo.mask(dataset, spec.data.attribute_labels)
        eval_stats = None
        if truth is not None:
            idx = truth.indices(TRAIN)
            eval_stats = groups.GroupStats.from_labels(truth.y[idx], truth.a[idx], truth.num_classes,
                                                       max(truth.num_attributes, 2))
        return Prepared(dataset, training_stats(dataset), None, eval_stats, truth)
    stats = training_stats(dataset)
    if check_beta and spec.method.name in ("gerne", "reweight"):
        groups.check_beta(stats, spec.method.c, spec.method.beta)
    return Prepared(dataset, stats)


def effective_c_beta(spec: JobSpec) -> tuple[float, float]:
    """The (c, beta) a method trains with: erm is beta = -1, resample is c = 1, beta = 0."""
    name = spec.method.name
    if name == "erm":
        return spec.method.c, -1.0
    if name == "resample":
        return 1.0, 0.0
    return spec.method.c, spec.method.beta


def make_optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, or AdamW, from `optim`."""
    o = spec.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def draw_rows(method: str, sampler: PairedSampler) -> tuple[np.ndarray, int]:
    """One step's sample indices (into the training split) and how many open the biased batch.

    GERNE: the biased batch then the less-biased one, as one array (one gather of both batches, so
    step.concat_batches needs no copy); resample: a less-biased batch; erm, reweight: a biased one.
    """
    if method == "gerne":
        biased = sampler.biased()
        return np.concatenate([biased, sampler.less_biased()]), len(biased)
    if method == "resample":
        return sampler.less_biased(), 0
    return sampler.biased(), 0


def method_losses(
    spec: JobSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, n_biased: int,
    weights: torch.Tensor | None,
) -> StepLosses:
    """The spec's method's losses on one step's batch (the first n_biased rows are the biased batch)."""
    name = spec.method.name
    if name == "gerne":
        n = n_biased
        return gerne_losses(model, x[:n], y[:n], x[n:], y[n:], spec.method.beta, spec.method.forward)
    return weighted_loss(model, x, y, weights[y, a] if name == "reweight" else None)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: GroupedDataset, split: int, metric_stats: tuple,
    ctx: WorkerContext, batch_size: int, num_workers: int = 0,
) -> tuple[dict[str, float], metrics.GroupTable]:
    """Metrics and per-group table of the model on one split (sharded over the workers).

    metric_stats: the training (counts, aligned) for weighted_avg and minority, `Prepared.metric_stats`
    ((None, None) when the training groups are unknown).
    """
    train_counts, aligned = metric_stats
    idx = dataset.indices(split)[ctx.rank :: ctx.world_size]
    was_training = model.training
    model.eval()
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    preds = [model(x.to(ctx.device)).argmax(1).cpu() for x in dataset.batches(chunks, num_workers)]
    model.train(was_training)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    counts = metrics.group_counts(dataset.y[idx], dataset.a[idx], pred, dataset.num_classes,
                                  dataset.num_attributes)
    n, correct = ctx.all_reduce_sum(torch.as_tensor(np.stack(counts))).numpy()
    table = metrics.table_from_counts(n, correct, dataset.num_attributes)
    values = metrics.metrics_from_table(table, train_counts, aligned)
    identities = getattr(dataset, "identities", None)
    if identities is not None:  # CivilComments: WGA over WILDS's overlapping (identity, y) groups
        from gerne_ray.data.civilcomments import wilds_group_table

        rows = wilds_group_table(dataset.y[idx], pred, identities[idx], dataset.identity_names)
        summed = ctx.all_reduce_sum(torch.tensor([[r["n"], r["correct"]] for r in rows], dtype=torch.int64))
        accuracies = [int(c) / int(m) for m, c in summed.tolist() if m]
        values["wga"] = min(accuracies) if accuracies else math.nan
    return values, table


def loss_scale(sampler: PairedSampler, ctx: WorkerContext) -> float:
    """Factor on this rank's mean loss so that DDP's average over ranks is the union's mean."""
    return sampler.share * ctx.world_size / sampler.batch_size_per_class


def _check_resumable(state: dict, spec: JobSpec, ctx: WorkerContext) -> None:
    saved = len(state["samplers"])
    if saved != ctx.world_size:
        raise GerneError(
            f"scaling.num_workers: the checkpoint of run {spec.name} was written by {saved} workers, "
            f"this run has {ctx.world_size}; resume with num_workers: {saved} or use a new name"
        )


def train_loop(
    spec: JobSpec, prepared: Prepared, ctx: WorkerContext | None = None, keep_best: bool = False
) -> list[dict]:
    """Train the spec's method for optim.epochs, evaluating val and test after every epoch.

    keep_best: also keep the weights of the epoch best by search.metric in the checkpoint
    (`best_model`, `best_epoch`, `best_value`).
    """
    ctx = ctx or WorkerContext()
    dataset, stats = prepared.dataset, prepared.stats
    train_idx = dataset.indices(TRAIN)
    c, beta = effective_c_beta(spec)
    torch.manual_seed(spec.seed)
    model = ctx.prepare_model(model_for(spec, dataset))
    optimizer = make_optimizer(spec, model)
    sampler = PairedSampler(
        dataset.y[train_idx], dataset.a[train_idx], dataset.num_classes, dataset.num_attributes,
        spec.optim.batch_size_per_class, c, seed=spec.seed, rank=ctx.rank, world_size=ctx.world_size,
    )
    history: list[dict] = []
    best: dict = {"best_model": None, "best_epoch": None, "best_value": -math.inf}
    state = ctx.load_checkpoint()
    if state is not None:
        _check_resumable(state, spec, ctx)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["samplers"][ctx.rank])
        history = list(state["history"])
        best.update({k: state[k] for k in best if k in state})
    if history and history[-1]["status"] == "diverged":
        return history

    weights = torch.as_tensor(groups.reweight_weights(stats, c, beta), dtype=torch.float32, device=ctx.device)
    y_t, a_t = torch.tensor(dataset.y), torch.tensor(dataset.a)
    workers = spec.data.num_workers

    steps = spec.optim.steps_per_epoch or math.ceil(
        len(train_idx) / (dataset.num_classes * spec.optim.batch_size_per_class)
    )
    scale = loss_scale(sampler, ctx)
    samples_per_step = spec.optim.batch_size_per_class * dataset.num_classes
    samples_per_step *= 2 if spec.method.name == "gerne" else 1
    diagnose = spec.method.paired_diagnostics and spec.method.name == "gerne"
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=spec.optim.amp == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    nan = torch.tensor(math.nan, device=ctx.device)

    def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
        return ctx.all_reduce_sum(t) / ctx.world_size

    for epoch in range(len(history) + 1, spec.optim.epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=ctx.device)  # no per-step sync
        diag_sums = torch.zeros(len(DIAGNOSTIC_KEYS), dtype=torch.float64)
        # the epoch's batches are drawn first (the sampler's stream in step order), then read,
        # ahead of the model by a DataLoader's workers when the inputs are files
        plan = [draw_rows(spec.method.name, sampler) for _ in range(steps)]
        rows = [torch.as_tensor(train_idx[local]) for local, _ in plan]
        for (_, n_biased), r, x in zip(plan, rows, dataset.batches(rows, workers), strict=True):
            optimizer.zero_grad(set_to_none=True)
            x, y, a = x.to(ctx.device), y_t[r].to(ctx.device), a_t[r].to(ctx.device)
            with no_sync() if diagnose else contextlib.nullcontext(), autocast:
                losses = method_losses(spec, model, x, y, a, n_biased, weights)
            if diagnose:
                diag = paired_gradients(params, scale * losses.loss_b, scale * losses.loss_lb,
                                        spec.method.beta, all_reduce_mean if ctx.world_size > 1 else None)
                diag_sums += torch.tensor([diag[k] for k in DIAGNOSTIC_KEYS], dtype=torch.float64)
            else:
                (scale * losses.loss).backward()
            optimizer.step()
            parts = [getattr(losses, k) for k in LOSS_KEYS]
            loss_sums += torch.stack([nan if p is None else p.detach() for p in parts]).double() * scale
        loss_means = ctx.all_reduce_sum(loss_sums.cpu()) / ctx.world_size / steps
        elapsed = time.perf_counter() - start
        diag_means = diag_sums / steps if diagnose else torch.full_like(diag_sums, math.nan)
        means = dict(zip(LOSS_KEYS + DIAGNOSTIC_KEYS, loss_means.tolist() + diag_means.tolist(), strict=True))
        row: dict = {"epoch": epoch, "status": "ok", "reason": "", **means}
        row["loss_ext"] = row["loss"] if spec.method.name == "gerne" else math.nan
        row["epoch_time_s"] = elapsed
        row["samples_per_s"] = steps * samples_per_step / elapsed
        if not math.isfinite(row["loss"]):
            row.update(status="diverged", reason=f"mean training loss became {row['loss']} in epoch {epoch}")
            log.warning("run %s diverged: %s", spec.name, row["reason"])
        else:
            for split_name, split in EVAL_SPLITS.items():
                values, table = evaluate(
                    unwrap(model), dataset, split, prepared.metric_stats, ctx, spec.optim.eval_batch_size,
                    workers,
                )
                masked = spec.data.attributes == "unknown" and (split_name, spec.data.attribute_labels) == (
                    "val", "none")  # every validation label is 0 there: absent groups say nothing
                if epoch == 1 and table.missing and ctx.rank == 0 and not masked:
                    log.warning("%s split: %d groups absent, skipped in its metrics: %s",
                                split_name, len(table.missing), table.missing)
                row.update({f"{split_name}_{k}": v for k, v in values.items()})
                row[f"{split_name}_groups"] = table.rows()
        history.append(row)
        value = row.get(spec.search.metric, math.nan)
        if keep_best and row["status"] == "ok" and math.isfinite(value) and value > best["best_value"]:
            kept = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
            best.update(best_model=kept, best_epoch=epoch, best_value=value)
        ctx.save(row, {
            **(best if keep_best else {}),
            "epoch": epoch,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "samplers": ctx.all_gather(sampler.state_dict()),
            "history": history,
        })
        if row["status"] == "diverged":
            break
    return history


def objective_key(metric: str) -> str:
    """The reported key holding the best value of `metric` so far (what Tune and Optuna maximise)."""
    return f"best_{metric}"


def epoch_metrics(row: dict, history: list[dict], metric: str) -> dict:
    """The scalars reported for an epoch, plus the best finite value of `metric` so far (0 if none).

    Optuna takes a trial's last report as its value and ASHA compares reports at its rungs: the
    running best makes both see the trial's selected epoch, and a diverged trial a finite worst value.
    """
    best = select_epoch(history, metric)
    out = {k: v for k, v in row.items() if isinstance(v, int | float | str)}
    out[objective_key(metric)] = best[metric] if best else 0.0
    return out


def select_epoch(history: list[dict], metric: str) -> dict | None:
    """The completed epoch with the highest validation metric (earliest on ties), or None."""
    done = [r for r in history if r["status"] == "ok" and math.isfinite(r[metric])]
    return max(done, key=lambda r: (r[metric], -r["epoch"])) if done else None


def absent_groups(dataset: GroupedDataset, split: int) -> list[list[int]]:
    """The (y, a) groups with no samples in a split: left out of that split's metrics."""
    idx = dataset.indices(split)
    y, a = dataset.y[idx], dataset.a[idx]
    table = metrics.group_table(y, a, y, dataset.num_classes, dataset.num_attributes)
    return [list(g) for g in table.missing]


def summarize(spec: JobSpec, prepared: Prepared, history: list[dict]) -> dict:
    """result.json's content: config, status, selected epoch and its metrics keyed <split>_<metric>."""
    metric = spec.search.metric
    best = select_epoch(history, metric)
    last = history[-1] if history else {"status": "ok", "reason": ""}
    c, beta = effective_c_beta(spec)
    lo, hi = groups.exact_bounds(prepared.stats, c)
    result: dict = {
        "name": spec.name,
        "method": spec.method.name,
        "status": "diverged" if last["status"] == "diverged" else "completed",
        "reason": last["reason"],
        "selection_metric": metric,
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": sum(r["status"] == "ok" for r in history),
        "c": c,
        "beta": beta,
        "lambda": groups.lambda_of(beta, c),
        "beta_bounds_exact": [lo, hi],
    }
    for split in EVAL_SPLITS:
        for name in metrics.METRIC_NAMES:
            result[f"{split}_{name}"] = best[f"{split}_{name}"] if best else None
        result[f"{split}_groups"] = best[f"{split}_groups"] if best else []
        result[f"{split}_missing_groups"] = absent_groups(prepared.dataset, EVAL_SPLITS[split])
    result["train_groups"] = prepared.stats.to_rows()
    if prepared.ranking is not None:  # unknown attributes: the pseudo-groups of method.t
        from gerne_ray import pseudo

        result["t"] = spec.method.t
        if prepared.truth is not None:  # true training attributes exist: how good are the pseudo-groups
            result.update(pseudo.precision_recall(prepared.truth, prepared.ranking, spec.method.t))
    result["config"] = spec.model_dump(mode="json")
    return result


def history_rows(history: list[dict]) -> list[dict]:
    """History rows with a fixed schema (diverged rows padded) for Parquet."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    return [{k: r.get(k) for k in keys} for r in history]


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


def train(spec: SpecLike, overrides: list[str] | None = None, dataset: GroupedDataset | None = None) -> dict:
    """Run one configuration, resuming its run folder's checkpoint if any; write and return the result.

    One worker without a GPU trains in-process; `scaling.num_workers > 1` or `scaling.use_gpu` runs
    Ray Train workers (gerne_ray.distributed).
    """
    spec = load_spec(spec, overrides)
    prepared = prepare(spec, dataset)
    if spec.scaling.distributed:  # the cluster must fit the workers before anything is written
        from gerne_ray.distributed import ensure_ray

        ensure_ray(spec)
    folder = spec.folder
    folder.check_writable()
    claim_run_dir(spec)
    if spec.data.attributes == "unknown":  # stage 1 and 2 (once per job), then method.t's pseudo-groups
        from gerne_ray import pseudo

        prepared.ranking = pseudo.biased_ranking(spec, prepared.dataset, folder)
        prepared = prepared.for_spec(spec)
        if spec.method.name in ("gerne", "reweight"):
            groups.check_beta(prepared.stats, spec.method.c, spec.method.beta)
    if spec.scaling.distributed:
        from gerne_ray.distributed import fit_distributed

        history = fit_distributed(spec, prepared)
    else:
        folder.pull(CHECKPOINT_FILE)
        ctx = WorkerContext(checkpoint_dir=folder.local, after_save=lambda: folder.push(CHECKPOINT_FILE))
        history = train_loop(spec, prepared, ctx)
    result = summarize(spec, prepared, history)
    results.write_rows_parquet(folder.local / "history.parquet", history_rows(history))
    results.write_json(folder.local / "result.json", result)
    folder.push("history.parquet", "result.json")
    return result
