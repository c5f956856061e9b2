"""First stages: models trained once per job before the method's own runs, cached in the run folder.

The unknown-attribute mode (gerne_ray.pseudo) needs a biased model: ERM on class-balanced batches
with weight decay x2 and learning rate x0.1, its epoch selected by validation class-balanced
accuracy, or its last epoch (data.stage1_select: last); stage 2 scores every training sample's
confidence in its own label, p(y | x), and ranks the samples of each class from the least confident.
Both run once per job, in `<run>/stage1-<key>/` (key: a hash of what they depend on: data incl.
attribute_labels and stage1_select, model, optim but its epochs, seed), fetched from and copied
back to the run's storage, and reused by every trial and on resume;
`ranking.parquet` holds id, y, confidence and rank within class.

JTT (gerne_ray.methods.jtt) needs the error sets of an ERM model: `jtt_errors` trains class-balanced
ERM with the job's optim settings one epoch at a time (train_loop resumes its checkpoint) and after
every epoch e records which training rows the model misclassifies, row e - 1 of `jtt_errors.npy`
(epochs x training rows, bool), in `<run>/stage1-jtt-<key>/` (key: as above, with the epochs trained).

This module runs the training loop (gerne_ray.loop); the loop never imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import torch

from gerne_ray import results
from gerne_ray.data.base import TRAIN, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import (
    CHECKPOINT_FILE,
    Prepared,
    WorkerContext,
    load_state,
    model_for,
    train_loop,
    training_stats,
)
from gerne_ray.pseudo import Ranking, rank_within_class
from gerne_ray.spec import JobSpec, load_spec
from gerne_ray.storage import RunFolder

log = logging.getLogger(__name__)
RANKING_FILE = "ranking.parquet"
STAGE1_EPOCH_KEY = "val_class_balanced"


def stage1_spec(spec: JobSpec) -> JobSpec:
    """The biased model: class-balanced ERM, weight decay x2, lr x0.1, epoch by val class-balanced."""
    o = spec.optim
    return load_spec(spec, [
        "method={name: erm}", f"optim.lr={o.lr * 0.1!r}", f"optim.weight_decay={o.weight_decay * 2!r}",
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


def biased_ranking(spec: JobSpec, masked: GroupedDataset, run: RunFolder) -> Ranking:
    """Stage 1 and 2, once per job: train (or reuse) the biased model and rank the training samples.

    The stage's folder is fetched from the run folder's storage first and copied back after, so a
    resume on another machine (storage at a URI) reuses it too.
    """
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
    last = spec.data.stage1_select == "last"
    ctx = WorkerContext(checkpoint_dir=folder)
    history = train_loop(sspec, Prepared(masked, training_stats(masked)), ctx, keep_best=not last)
    state = load_state(folder / CHECKPOINT_FILE)
    if last and history and history[-1]["status"] == "ok":
        state.update(best_model=state["model"], best_epoch=history[-1]["epoch"],
                     best_value=history[-1].get(STAGE1_EPOCH_KEY))
    if state.get("best_model") is None:  # no epoch finished with a finite validation metric
        why = " (data.stage1_select is last, and the last one diverged)" if last else ""
        raise GerneError("data.attributes: the biased model (stage 1) diverged before any usable "
                         f"epoch{why}; lower optim.lr")
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


JTT_ERRORS_FILE = "jtt_errors.npy"
JTT_PARTIAL_FILE = "jtt_errors_partial.npy"


def jtt_stage1_spec(spec: JobSpec, epochs: int) -> JobSpec:
    """JTT's identification model: class-balanced ERM with the job's optim settings, for `epochs` epochs."""
    return load_spec(spec, ["method={name: erm}", f"optim.epochs={epochs}", "scaling.num_workers=1",
                            "scaling.use_gpu=false"])


def jtt_key(spec: JobSpec, epochs: int) -> str:
    """A hash of everything JTT's first stage depends on, the epochs it trains included."""
    raw = spec.model_dump(mode="json")
    parts = {k: raw[k] for k in ("seed", "data", "model", "optim")}
    parts["optim"]["epochs"] = epochs
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def misclassified(model: torch.nn.Module, dataset: GroupedDataset, batch_size: int,
                  workers: int) -> np.ndarray:
    """Which training rows the model's argmax gets wrong (bool, in the order of the training split)."""
    idx = dataset.indices(TRAIN)
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1).cpu() for x in dataset.batches(chunks, workers)]).numpy()
    return pred != dataset.y[idx]


def _save_npy(path, array: np.ndarray) -> None:
    def write(tmp) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, array)

    results.atomic_write(path, write)


def jtt_errors(spec: JobSpec, dataset: GroupedDataset, run: RunFolder, epochs: int) -> np.ndarray:
    """JTT's first stage, once per job: ERM for `epochs` epochs and every epoch's misclassified training rows.

    Returns a bool matrix (epochs x training rows, rows in the order of the training split): row
    e - 1 marks the rows the model misclassifies after epoch e. The folder is fetched from and copied
    back to the run's storage (after every epoch, so a killed job resumes the stage where it stopped).
    """
    name = f"stage1-jtt-{jtt_key(spec, epochs)}"
    run.pull(name)
    folder = run.local / name
    n = len(dataset.indices(TRAIN))
    done = folder / JTT_ERRORS_FILE
    if done.is_file():
        errors = np.load(done, allow_pickle=False)
        if errors.shape != (epochs, n):
            raise GerneError(f"{done}: holds {errors.shape} error flags, not {(epochs, n)}; delete "
                             f"the folder {folder} to train JTT's first stage again")
        log.warning("stage 1 (jtt): reusing the error sets in %s", folder)
        return errors
    folder.mkdir(parents=True, exist_ok=True)
    ctx = WorkerContext(checkpoint_dir=folder)
    checkpoint, partial = folder / CHECKPOINT_FILE, folder / JTT_PARTIAL_FILE
    state = ctx.load_checkpoint()
    trained = state["epoch"] if state is not None else 0
    rows = list(np.load(partial, allow_pickle=False)) if partial.is_file() else []
    if len(rows) < trained - 1:  # the models of the epochs not scored are gone: start the stage over
        log.warning("stage 1 (jtt): %s lacks the error sets of epochs it trained; training it again", folder)
        checkpoint.unlink()
        state, trained, rows = None, 0, []
    rows = rows[:trained]
    log.warning("stage 1 (jtt): training ERM for %d epochs in %s", epochs, folder)
    prepared = Prepared(dataset, training_stats(dataset))
    sspec = jtt_stage1_spec(spec, epochs)
    model = model_for(sspec, dataset)
    history = list(state["history"]) if state is not None else []
    for epoch in range(len(rows) + 1, epochs + 1):
        if trained < epoch:  # train_loop resumes the checkpoint and trains up to this epoch
            history = train_loop(jtt_stage1_spec(spec, epoch), prepared, ctx)
            if history[-1]["status"] == "diverged":
                raise GerneError(f"method: JTT's first-stage ERM diverged in epoch {history[-1]['epoch']} "
                                 f"({history[-1]['reason']}); lower optim.lr")
            trained = epoch
        model.load_state_dict(load_state(checkpoint)["model"])
        rows.append(misclassified(model, dataset, sspec.optim.eval_batch_size, sspec.data.num_workers))
        _save_npy(partial, np.stack(rows))
        run.push(name)
    errors = np.stack(rows).astype(bool) if rows else np.zeros((0, n), dtype=bool)
    results.write_json(folder / "stage1.json", {
        "epochs": [{"epoch": r["epoch"], "errors": int(e.sum()), "train_error_rate": float(e.mean()),
                    **{k: v for k, v in r.items() if k.startswith("val_") and not k.endswith("_groups")}}
                   for r, e in zip(history, errors, strict=True)],
        "spec": sspec.model_dump(mode="json"),
    })
    _save_npy(done, errors)
    run.push(name)
    return errors
