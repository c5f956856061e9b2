"""Unknown attributes: pseudo-groups from a biased model (gerne-method.md section 5).

`data.attributes: unknown` makes training read no attribute label. `data.attribute_labels` says
which true labels exist at all: `train_val` (train and validation: the pseudo-groups' precision
and recall are reported), `val_only` (validation only: model selection by validation WGA) or
`none` (model selection by validation worst-class accuracy). `mask` replaces every label the
setting calls unknown by 0 before anything else sees the dataset, so no code path can read them.

Stage 1 trains the biased model: ERM on class-balanced batches with weight decay x2 and learning
rate x0.1, its epoch selected by validation class-balanced accuracy. Stage 2 scores every training
sample's confidence in its own label, p(y | x), and ranks the samples of each class from the least
confident. Both run once per job, in `<run>/stage1-<key>/` (key: a hash of what they depend on:
data incl. attribute_labels, model, optim but its epochs, seed), fetched from and copied back to
the run's storage, and reused by every trial and on resume;
`ranking.parquet` holds id, y, confidence and rank within class. A trial with threshold t puts the
floor(t |X_y|) least confident samples of each class y into pseudo-group 1, the rest into 0; beta's
bounds come from those pseudo-group counts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from gerne_ray import groups, results
from gerne_ray.data.base import TRAIN, VAL, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.spec import JobSpec, load_spec
from gerne_ray.storage import RunFolder

log = logging.getLogger(__name__)
RANKING_FILE = "ranking.parquet"
STAGE1_EPOCH_KEY = "val_class_balanced"


@dataclass
class Ranking:
    """Stage 2's result over the training split (in the order of its rows): rank within class."""

    y: np.ndarray  # class of each training row
    rank: np.ndarray  # 0 = least confident in its own label, within its class
    confidence: np.ndarray

    @property
    def class_sizes(self) -> np.ndarray:
        """|X_y| for every class y."""
        return np.bincount(self.y, minlength=int(self.y.max()) + 1)


def mask(dataset: GroupedDataset, attribute_labels: str) -> GroupedDataset:
    """A copy whose attribute labels the setting calls unknown are 0: train's always, val's with `none`."""
    a = dataset.a.copy()
    a[dataset.split == TRAIN] = 0
    if attribute_labels == "none":
        a[dataset.split == VAL] = 0
    out = copy.copy(dataset)
    out.a = a
    return out


def pseudo_attributes(ranking: Ranking, t: float) -> np.ndarray:
    """Pseudo-group of every training row: 1 for the floor(t |X_y|) least confident of each class."""
    cut = np.floor(t * ranking.class_sizes + 1e-9).astype(np.int64)
    return (ranking.rank < cut[ranking.y]).astype(np.int64)


def pseudo_stats(ranking: Ranking, t: float, num_attributes: int) -> groups.GroupStats:
    """The pseudo-groups' training counts (K x num_attributes, columns 0 and 1 used)."""
    return groups.GroupStats.from_labels(ranking.y, pseudo_attributes(ranking, t),
                                         len(ranking.class_sizes), num_attributes)


def min_threshold(ranking: Ranking) -> float:
    """The smallest t that puts at least one sample of every class into pseudo-group 1."""
    return float(1.0 / ranking.class_sizes.min())


def with_pseudo_groups(dataset: GroupedDataset, ranking: Ranking, t: float) -> GroupedDataset:
    """The (masked) dataset with its training rows' attributes set to their pseudo-group for t."""
    a = dataset.a.copy()
    a[dataset.split == TRAIN] = pseudo_attributes(ranking, t)
    out = copy.copy(dataset)
    out.a, out.num_attributes = a, max(dataset.num_attributes, 2)
    return out


def precision_recall(dataset: GroupedDataset, ranking: Ranking, t: float) -> dict[str, float]:
    """How well pseudo-group 1 finds the bias-conflicting training samples (true labels: reporting only).

    A training sample is bias-conflicting when its true group is not its class's largest group.
    """
    train = dataset.split == TRAIN
    y, a = dataset.y[train], dataset.a[train]
    counts = groups.GroupStats.from_labels(y, a, dataset.num_classes, dataset.num_attributes).counts
    conflicting = a != counts.argmax(axis=1)[y]
    found = pseudo_attributes(ranking, t).astype(bool)
    hits = int((found & conflicting).sum())
    return {
        "pseudo_precision": hits / int(found.sum()) if found.any() else math.nan,
        "pseudo_recall": hits / int(conflicting.sum()) if conflicting.any() else math.nan,
        "pseudo_minority_size": int(found.sum()),
        "true_minority_size": int(conflicting.sum()),
    }


def stage1_spec(spec: JobSpec) -> JobSpec:
    """The biased model: class-balanced ERM, weight decay x2, lr x0.1, epoch by val class-balanced."""
    o = spec.optim
    return load_spec(spec, [
        "method.name=erm", f"optim.lr={o.lr * 0.1!r}", f"optim.weight_decay={o.weight_decay * 2!r}",
        f"search.metric={STAGE1_EPOCH_KEY}", "scaling.num_workers=1", "scaling.use_gpu=false",
    ])


def stage1_key(spec: JobSpec) -> str:
    """A hash of everything stage 1 depends on (optim.epochs aside: a rerun with more epochs resumes
    the same job, and its pseudo-groups must not change under it)."""
    raw = spec.model_dump(mode="json")
    parts = {k: raw[k] for k in ("seed", "data", "model", "optim")}
    del parts["optim"]["epochs"]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def score(model: torch.nn.Module, dataset: GroupedDataset, batch_size: int, workers: int) -> np.ndarray:
    """p(y | x) of every training row under the model."""
    idx = dataset.indices(TRAIN)
    y = torch.as_tensor(dataset.y[idx])
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), dim=1).cpu() for x in dataset.batches(chunks, workers)])
    return probs[torch.arange(len(idx)), y].double().numpy()


def rank_within_class(y: np.ndarray, confidence: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0 for the least confident sample of each class, then upwards (ties broken by id)."""
    order = np.lexsort((ids, confidence, y))
    rank = np.empty(len(y), dtype=np.int64)
    starts = np.searchsorted(y[order], y[order], side="left")
    rank[order] = np.arange(len(y)) - starts
    return rank


def biased_ranking(spec: JobSpec, masked: GroupedDataset, run: RunFolder) -> Ranking:
    """Stage 1 and 2, once per job: train (or reuse) the biased model and rank the training samples.

    The stage's folder is fetched from the run folder's storage first and copied back after, so a
    resume on another machine (storage at a URI) reuses it too.
    """
    from gerne_ray.training import WorkerContext, load_state, model_for, prepare, train_loop

    name = f"stage1-{stage1_key(spec)}"
    run.pull(name)
    folder = run.local / name
    path = folder / RANKING_FILE
    if path.is_file():
        log.warning("stage 1: reusing the biased model's ranking in %s", folder)
        table = pq.read_table(path).to_pydict()
        return Ranking(np.asarray(table["y"]), np.asarray(table["rank"]), np.asarray(table["confidence"]))
    sspec = stage1_spec(spec)
    log.warning("stage 1: training the biased model (%d epochs) in %s", sspec.optim.epochs, folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_loop(sspec, prepare(sspec, masked), WorkerContext(checkpoint_dir=folder), keep_best=True)
    state = load_state(folder / "checkpoint.pt")
    if state.get("best_model") is None:  # no epoch finished with a finite validation metric
        raise GerneError("data.attributes: the biased model (stage 1) diverged before any usable epoch; "
                         "lower optim.lr")
    model = model_for(sspec, masked)
    model.load_state_dict(state["best_model"])
    confidence = score(model, masked, sspec.optim.eval_batch_size, sspec.data.num_workers)
    train = masked.indices(TRAIN)
    y, ids = masked.y[train], masked.ids[train]
    rank = rank_within_class(y, confidence, ids)
    results.write_rows_parquet(path, [
        {"id": int(i), "y": int(c), "confidence": float(p), "rank": int(r)}
        for i, c, p, r in zip(ids, y, confidence, rank, strict=True)
    ])
    results.write_json(folder / "stage1.json", {
        "best_epoch": state["best_epoch"], STAGE1_EPOCH_KEY: state["best_value"],
        "spec": sspec.model_dump(mode="json"),
    })
    run.push(name)
    return Ranking(y, rank, confidence)
