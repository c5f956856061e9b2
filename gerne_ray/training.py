"""The one training loop: erm, resample, reweight or gerne, from a spec.

`train_loop` is the same code in-process and (later) on Ray Train workers: it takes a
WorkerContext (rank, world size, device, a per-epoch report callback) and knows nothing of Ray.
`train` runs it in-process and writes `history.parquet` and `result.json` under the run folder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gerne_ray import groups, metrics, results
from gerne_ray.data import load_dataset
from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.models import build_model
from gerne_ray.sampling import PairedSampler
from gerne_ray.spec import JobSpec, SpecLike, load_spec
from gerne_ray.step import StepLosses, gerne_losses, weighted_loss

log = logging.getLogger(__name__)
EVAL_SPLITS = {"val": VAL, "test": TEST}


@dataclass
class WorkerContext:
    """Where the loop runs: rank and world size, the device, and a per-epoch report callback."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict], None] | None = None


@dataclass
class Prepared:
    """What every run of a job shares: the dataset and its training group statistics."""

    dataset: GroupedDataset
    stats: groups.GroupStats


def training_stats(dataset: GroupedDataset) -> groups.GroupStats:
    """Group statistics of the dataset's training split."""
    train_idx = dataset.indices(TRAIN)
    if len(train_idx) == 0:
        raise GerneError(f"data.dataset: {dataset.name} has no training samples (split 0)")
    return groups.GroupStats.from_labels(
        dataset.y[train_idx], dataset.a[train_idx], dataset.num_classes, dataset.num_attributes
    )


def prepare(spec: JobSpec, dataset: GroupedDataset | None = None) -> Prepared:
    """Load the dataset, compute the training split's group statistics and check beta against them."""
    dataset = dataset if dataset is not None else load_dataset(spec.data)
    stats = training_stats(dataset)
    if spec.method.name in ("gerne", "reweight"):
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


def method_losses(
    spec: JobSpec, model: nn.Module, sampler: PairedSampler, batch: Callable, weights: torch.Tensor | None
) -> StepLosses:
    """Draw this step's batches for the spec's method and compute its losses."""
    name = spec.method.name
    if name == "gerne":
        x_b, y_b, _ = batch(sampler.biased())
        x_lb, y_lb, _ = batch(sampler.less_biased())
        return gerne_losses(model, x_b, y_b, x_lb, y_lb, spec.method.beta, spec.method.forward)
    if name == "resample":
        x, y, _ = batch(sampler.less_biased())
        return weighted_loss(model, x, y)
    x, y, a = batch(sampler.biased())
    return weighted_loss(model, x, y, weights[y, a] if name == "reweight" else None)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: GroupedDataset, split: int, stats: groups.GroupStats,
    device: torch.device, batch_size: int,
) -> tuple[dict[str, float], metrics.GroupTable]:
    """Metrics and per-group table of the model on one split."""
    idx = dataset.indices(split)
    was_training = model.training
    model.eval()
    preds = [
        model(dataset.inputs[idx[i : i + batch_size]].to(device)).argmax(1).cpu()
        for i in range(0, len(idx), batch_size)
    ]
    model.train(was_training)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    table = metrics.group_table(
        dataset.y[idx], dataset.a[idx], pred, dataset.num_classes, dataset.num_attributes
    )
    return metrics.metrics_from_table(table, stats.counts, stats.aligned), table


def train_loop(spec: JobSpec, prepared: Prepared, ctx: WorkerContext | None = None) -> list[dict]:
    """Train the spec's method for optim.epochs, evaluating val and test after every epoch."""
    ctx = ctx or WorkerContext()
    dataset, stats = prepared.dataset, prepared.stats
    train_idx = dataset.indices(TRAIN)
    y_tr, a_tr = dataset.y[train_idx], dataset.a[train_idx]
    c, beta = effective_c_beta(spec)
    torch.manual_seed(spec.seed)
    model = build_model(
        spec.model.arch, dataset.input_shape, dataset.num_classes, spec.model.pretrained, spec.model.hidden
    ).to(ctx.device)
    optimizer = make_optimizer(spec, model)
    sampler = PairedSampler(
        y_tr, a_tr, dataset.num_classes, dataset.num_attributes, spec.optim.batch_size_per_class,
        c, seed=spec.seed, rank=ctx.rank, world_size=ctx.world_size,
    )
    weights = torch.as_tensor(groups.reweight_weights(stats, c, beta), dtype=torch.float32, device=ctx.device)
    y_t, a_t = torch.as_tensor(dataset.y), torch.as_tensor(dataset.a)

    def batch(local: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(train_idx[local])
        return (dataset.inputs[rows].to(ctx.device), y_t[rows].to(ctx.device), a_t[rows].to(ctx.device))

    steps = spec.optim.steps_per_epoch or math.ceil(
        len(train_idx) / (dataset.num_classes * spec.optim.batch_size_per_class)
    )
    samples_per_step = sampler.share * dataset.num_classes * (2 if spec.method.name == "gerne" else 1)
    history: list[dict] = []
    for epoch in range(1, spec.optim.epochs + 1):
        model.train()
        start = time.perf_counter()
        sums = {"loss": 0.0, "loss_b": 0.0, "loss_lb": 0.0}
        for step in range(steps):
            losses = method_losses(spec, model, sampler, batch, weights)
            if not torch.isfinite(losses.loss):
                reason = f"loss became {losses.loss.item()} at epoch {epoch}, step {step + 1}"
                log.warning("run %s diverged: %s", spec.name, reason)
                history.append({"epoch": epoch, "status": "diverged", "reason": reason})
                return history
            optimizer.zero_grad(set_to_none=True)
            losses.loss.backward()
            optimizer.step()
            for key in sums:
                part = getattr(losses, key)
                sums[key] += part.item() if part is not None else math.nan
        elapsed = time.perf_counter() - start
        row: dict = {"epoch": epoch, "status": "ok", "reason": ""}
        row.update({k: v / steps for k, v in sums.items()})
        row["loss_ext"] = row["loss"] if spec.method.name == "gerne" else math.nan
        row["epoch_time_s"] = elapsed
        row["samples_per_s"] = steps * samples_per_step * ctx.world_size / elapsed
        for split_name, split in EVAL_SPLITS.items():
            values, table = evaluate(model, dataset, split, stats, ctx.device, spec.optim.eval_batch_size)
            if epoch == 1 and table.missing:
                log.warning("%s split: %d groups absent, skipped in its metrics: %s",
                         split_name, len(table.missing), table.missing)
            row.update({f"{split_name}_{k}": v for k, v in values.items()})
            row[f"{split_name}_groups"] = table.rows()
        history.append(row)
        if ctx.report is not None:
            ctx.report(row)
    return history


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
    result["config"] = spec.model_dump(mode="json")
    return result


def history_rows(history: list[dict]) -> list[dict]:
    """History rows with a fixed schema (diverged rows padded) for Parquet."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    return [{k: r.get(k) for k in keys} for r in history]


def train(spec: SpecLike, overrides: list[str] | None = None, dataset: GroupedDataset | None = None) -> dict:
    """Run one configuration in-process and write history.parquet and result.json; return the result."""
    spec = load_spec(spec, overrides)
    prepared = prepare(spec, dataset)
    history = train_loop(spec, prepared)
    result = summarize(spec, prepared, history)
    run_dir = spec.run_dir
    results.write_rows_parquet(run_dir / "history.parquet", history_rows(history))
    results.write_json(run_dir / "result.json", result)
    return result
