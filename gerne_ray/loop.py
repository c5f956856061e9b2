"""The one training loop: any registered method, the same code in-process and on Ray Train workers.

`train_loop(spec, prepared, ctx)` trains the spec's method (gerne_ray.methods) for optim.epochs and
evaluates val and test after every epoch. It knows no method by name: the method draws a step's
rows, computes its losses and keeps its own state; the loop holds what every method shares (the
device, DDP, autocast, loss scaling, optimisers, evaluation, checkpoints). It calls nothing above
it: whoever runs it (gerne_ray.training in-process, gerne_ray.distributed on Ray Train workers, a
Tune trial, a first stage) hands it a WorkerContext, which says what differs between them: rank and
world size, the device, how a model is wrapped for data parallelism, how tensors are all-reduced,
and where checkpoints go.

Data parallelism: with W workers and B samples per class, rank r draws B // W + (1 if r < B % W)
samples per class of each batch from its own random stream. Each rank's mean loss is scaled by
(its samples x W / all samples), so that DDP's average over ranks is the mean over the union of
the ranks' batches even when W does not divide B. Evaluation is sharded: each rank predicts every
W-th sample and the per-group counts are all-reduced, so every rank holds the same metrics.

A checkpoint (`checkpoint_state` / `restore_state`, the one place its layout lives) holds the epoch,
every network's and optimiser's state, the method's state, every rank's sampler RNG state and the
history: a resumed run continues exactly where it stopped. The optimisers' learning rate and weight
decay are the spec's, not the checkpoint's: a PBT trial that restores another trial's checkpoint
trains on with its own perturbed values (for a plain resume they are the same).

Each epoch's row records what the method set for it (`Method.epoch_start`: GERNE's beta and c, which
a beta_schedule moves), the learning rate, and inside Tune the trial that trained it
(`trained_in_trial`: after a PBT exploit, the epochs before it name the trial they were copied from).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gerne_ray import groups, methods, metrics, pseudo, results
from gerne_ray.data.base import TRAIN, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method
from gerne_ray.models import build_model
from gerne_ray.progress import EpochProgress
from gerne_ray.results import EVAL_SPLITS
from gerne_ray.sampling import PairedSampler
from gerne_ray.spec import JobSpec

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


class WorkerContext:
    """One in-process worker: no collectives; checkpoints go to `checkpoint_dir` when given."""

    node_id: str | None = None  # the Ray node this worker runs on (None outside Ray): in each epoch's row
    trial_id: str | None = None  # the Tune trial running the loop (None outside Tune): in each epoch's row
    # the checkpoint policy: every checkpoint_every-th epoch, each epoch in checkpoint_epochs and the last
    # one (or the one that diverged) end with a checkpoint; the others are only reported (`report`)
    checkpoint_every: int = 1
    checkpoint_epochs: frozenset[int] = frozenset()

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

    def checkpoint_due(self, epoch: int, last: bool) -> bool:
        """Whether this epoch ends with a checkpoint (`save`) or only with its row (`report`)."""
        return last or epoch % self.checkpoint_every == 0 or epoch in self.checkpoint_epochs

    def report(self, row: dict, history: list[dict]) -> None:
        """Record one finished epoch without a checkpoint: its row is in the next checkpoint's history."""


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
    """What every run of a job shares: the dataset, its training group statistics, first-stage outputs."""

    dataset: GroupedDataset
    stats: groups.GroupStats
    # unknown attributes (gerne_ray.pseudo): the biased model's ranking, the true training groups
    # for weighted_avg / minority where they exist, and the true dataset for precision / recall
    ranking: pseudo.Ranking | None = None
    eval_stats: groups.GroupStats | None = None
    truth: GroupedDataset | None = None
    stage1: object | None = None  # what the method's first stage produced (gerne_ray.stage1)
    unknown: bool = False  # data.attributes: unknown (the training attribute labels are masked)

    def for_spec(self, spec: JobSpec) -> Prepared:
        """What a run with this spec trains on: with unknown attributes, the pseudo-groups of method.t."""
        if self.ranking is None or not methods.get(spec.method.name).uses_groups:
            return self
        dataset = pseudo.with_pseudo_groups(self.dataset, self.ranking, spec.method.t)
        return Prepared(dataset, training_stats(dataset), self.ranking, self.eval_stats, self.truth,
                        self.stage1, self.unknown)

    @property
    def metric_stats(self) -> tuple:
        """Training counts and aligned groups for weighted_avg and minority (None, None if unknown)."""
        stats = self.eval_stats if self.unknown else self.stats
        return (stats.counts, stats.aligned) if stats is not None else (None, None)


def training_stats(dataset: GroupedDataset) -> groups.GroupStats:
    """Group statistics of the dataset's training split."""
    train_idx = dataset.indices(TRAIN)
    if len(train_idx) == 0:
        raise GerneError(f"data.dataset: {dataset.name} has no training samples (split 0)")
    return groups.GroupStats.from_labels(
        dataset.y[train_idx], dataset.a[train_idx], dataset.num_classes, dataset.num_attributes
    )


def model_for(spec: JobSpec, dataset: GroupedDataset, pretrained: bool | None = None) -> nn.Module:
    """The spec's model for the dataset's inputs and classes."""
    m = spec.model
    return build_model(
        m.arch, dataset.input_shape, dataset.num_classes, m.pretrained if pretrained is None else pretrained,
        m.hidden, m.name, getattr(dataset.inputs, "vocab_size", None),
        getattr(dataset.inputs, "pad_token_id", None), getattr(dataset.inputs, "sep_token_id", None),
    )


def make_optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, or AdamW, from `optim`."""
    o = spec.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


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


def checkpoint_state(epoch: int, nets: dict[str, nn.Module], optimizers: dict, method: Method,
                     samplers: list[dict], history: list[dict], best: dict | None) -> dict:
    """Everything a run resumes from after `epoch` (the only place the checkpoint's layout is written)."""
    aux = [k for k in nets if k != "model"]
    return {
        **(best or {}),
        "epoch": epoch,
        "method_name": method.name,
        "model": unwrap(nets["model"]).state_dict(),
        "optimizer": optimizers["model"].state_dict(),
        "aux_models": {k: unwrap(nets[k]).state_dict() for k in aux},
        "aux_optimizers": {k: optimizers[k].state_dict() for k in aux},
        "method": method.state_dict(),
        "samplers": samplers,
        "history": history,
    }


def restore_state(state: dict, spec: JobSpec, ctx: WorkerContext, nets: dict[str, nn.Module],
                  optimizers: dict, method: Method, sampler: PairedSampler) -> None:
    """Load what checkpoint_state saved into the run's networks, optimisers, method and sampler."""
    saved_method = state.get("method_name", method.name)
    if saved_method != method.name:
        raise GerneError(
            f"method.name: the checkpoint of run {spec.name} was written by method {saved_method}, this "
            f"run's is {method.name}; resume with method.name: {saved_method} or use a new name"
        )
    saved = len(state["samplers"])
    if saved != ctx.world_size:
        raise GerneError(
            f"scaling.num_workers: the checkpoint of run {spec.name} was written by {saved} workers, "
            f"this run has {ctx.world_size}; resume with num_workers: {saved} or use a new name"
        )
    unwrap(nets["model"]).load_state_dict(state["model"])
    optimizers["model"].load_state_dict(state["optimizer"])
    for k, value in state.get("aux_models", {}).items():
        unwrap(nets[k]).load_state_dict(value)
        optimizers[k].load_state_dict(state["aux_optimizers"][k])
    method.load_state_dict(state.get("method", {}))
    sampler.load_state_dict(state["samplers"][ctx.rank])
    for optimizer in optimizers.values():  # the spec's: a PBT exploit restores another trial's optimiser
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = spec.optim.lr, spec.optim.weight_decay


def train_loop(
    spec: JobSpec, prepared: Prepared, ctx: WorkerContext | None = None, keep_best: bool = False,
    progress: EpochProgress | None = None,
) -> list[dict]:
    """Train the spec's method for optim.epochs, evaluating val and test after every epoch.

    keep_best: also keep the weights of the epoch best by search.metric in the checkpoint
    (`best_model`, `best_epoch`, `best_value`). progress: told of every finished epoch (rank 0).
    """
    ctx = ctx or WorkerContext()
    dataset, stats = prepared.dataset, prepared.stats
    train_idx = dataset.indices(TRAIN)
    torch.manual_seed(spec.seed)
    method = methods.get(spec.method.name)(spec.method, stats, ctx, prepared.stage1)
    nets = {"model": model_for(spec, dataset)}
    nets.update(method.aux_models(lambda: model_for(spec, dataset)))
    nets = {k: ctx.prepare_model(m) for k, m in nets.items()}
    method.models = nets
    optimizers = {k: make_optimizer(spec, m) for k, m in nets.items()}
    sampler = PairedSampler(
        dataset.y[train_idx], dataset.a[train_idx], dataset.num_classes, dataset.num_attributes,
        spec.optim.batch_size_per_class, method.sampler_c, seed=spec.seed, rank=ctx.rank,
        world_size=ctx.world_size,
    )
    history: list[dict] = []
    best: dict = {"best_model": None, "best_epoch": None, "best_value": -math.inf}
    state = ctx.load_checkpoint()
    if state is not None:
        restore_state(state, spec, ctx, nets, optimizers, method, sampler)
        history = list(state["history"])
        best.update({k: state[k] for k in best if k in state})
    if history and history[-1]["status"] == "diverged":
        return history

    y_t, a_t = torch.tensor(dataset.y), torch.tensor(dataset.a)
    workers = spec.data.num_workers
    steps = spec.optim.steps_per_epoch or math.ceil(
        len(train_idx) / (dataset.num_classes * spec.optim.batch_size_per_class)
    )
    scale = loss_scale(sampler, ctx)
    samples_per_step = spec.optim.batch_size_per_class * dataset.num_classes * method.batches_per_step
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=spec.optim.amp == "bf16")
    loss_keys, diag_keys = method.loss_keys, method.diagnostic_keys
    nan = torch.tensor(math.nan, device=ctx.device)
    if progress is not None and ctx.rank == 0:
        progress.start(len(history) + 1)

    for epoch in range(len(history) + 1, spec.optim.epochs + 1):
        for net in nets.values():
            net.train()
        start = time.perf_counter()
        scheduled = method.epoch_start(epoch, spec.optim.epochs)  # e.g. GERNE's beta of this epoch
        loss_sums = torch.zeros(len(loss_keys), dtype=torch.float64, device=ctx.device)  # no per-step sync
        diag_sums = torch.zeros(len(diag_keys), dtype=torch.float64)
        # the epoch's batches are drawn first (the sampler's stream in step order), then read,
        # ahead of the model by a DataLoader's workers when the inputs are files
        plan = [method.draw(sampler) for _ in range(steps)]
        rows = [torch.as_tensor(train_idx[local]) for local, _ in plan]
        for (local, n_biased), r, x in zip(plan, rows, dataset.batches(rows, workers), strict=True):
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            y, a = y_t[r].to(ctx.device), a_t[r].to(ctx.device)
            batch = Batch(x.to(ctx.device), y, a, local, n_biased, scale)
            with method.step_context(), autocast:
                losses = method.losses(batch)
            diag = method.backward(losses, scale)
            if diag_keys:
                diag_sums += torch.tensor([diag[k] for k in diag_keys], dtype=torch.float64)
            for optimizer in optimizers.values():
                optimizer.step()
            parts = [losses.get(k) for k in loss_keys]
            loss_sums += torch.stack([nan if p is None else p.detach() for p in parts]).double() * scale
        loss_means = ctx.all_reduce_sum(loss_sums.cpu()) / ctx.world_size / steps
        elapsed = time.perf_counter() - start
        row: dict = {"epoch": epoch, "status": "ok", "reason": "",
                     **dict(zip(loss_keys, loss_means.tolist(), strict=True)),
                     **dict(zip(diag_keys, (diag_sums / steps).tolist(), strict=True))}
        row.update(scheduled)
        row["lr"] = optimizers["model"].param_groups[0]["lr"]
        if ctx.trial_id is not None:  # after a PBT exploit the earlier epochs were trained by another trial
            row["trained_in_trial"] = ctx.trial_id
        row["epoch_time_s"] = elapsed
        row["samples_per_s"] = steps * samples_per_step / elapsed
        if ctx.node_id is not None:  # on Ray: the node each rank ran this epoch on, in rank order
            row["node_ids"] = ctx.all_gather(ctx.node_id)
        if not math.isfinite(row["loss"]):
            row.update(status="diverged", reason=f"mean training loss became {row['loss']} in epoch {epoch}")
            log.warning("run %s diverged: %s", spec.name, row["reason"])
        else:
            evaluated = method.eval_model(unwrap(nets["model"]), dataset)
            for split_name, split in EVAL_SPLITS.items():
                values, table = evaluate(evaluated, dataset, split, prepared.metric_stats, ctx,
                                         spec.optim.eval_batch_size, workers)
                masked = spec.data.attributes == "unknown" and (split_name, spec.data.attribute_labels) == (
                    "val", "none")  # every validation label is 0 there: absent groups say nothing
                if epoch == 1 and table.missing and ctx.rank == 0 and not masked:
                    log.warning("%s split: %d groups absent, skipped in its metrics: %s",
                                split_name, len(table.missing), table.missing)
                row.update({f"{split_name}_{k}": v for k, v in values.items()})
                row[f"{split_name}_groups"] = table.rows()
        history.append(row)
        value = row.get(spec.search.primary, math.nan)
        if keep_best and row["status"] == "ok" and math.isfinite(value) and value > best["best_value"]:
            kept = {k: v.detach().cpu().clone() for k, v in unwrap(nets["model"]).state_dict().items()}
            best.update(best_model=kept, best_epoch=epoch, best_value=value)
        # a run restored from an older checkpoint redoes the epochs after it: its history is that
        # checkpoint's, so each epoch has one row
        if ctx.checkpoint_due(epoch, last=epoch == spec.optim.epochs or row["status"] == "diverged"):
            ctx.save(row, checkpoint_state(epoch, nets, optimizers, method,
                                           ctx.all_gather(sampler.state_dict()), history,
                                           best if keep_best else None))
        else:
            ctx.report(row, history)
        if progress is not None and ctx.rank == 0:
            progress.epoch_done(row)
        if row["status"] == "diverged":
            break
    return history
