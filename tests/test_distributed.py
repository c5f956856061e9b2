"""Ray Train: real TorchTrainer workers on a local cluster: gradient equivalence, resume, faults."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from gerne_ray.cli import main
from gerne_ray.data.base import TRAIN
from gerne_ray.loop import load_state
from gerne_ray.models import build_model
from gerne_ray.sampling import PairedSampler
from gerne_ray.spec import JobSpec, load_spec
from gerne_ray.training import prepare, train

BASE = {
    "name": "d",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "gerne", "c": 0.5, "beta": 1.0},
    "optim": {"lr": 0.05, "epochs": 2, "batch_size_per_class": 5, "steps_per_epoch": 3},
    "scaling": {"num_workers": 2},
}


def _spec(tmp_path, *overrides: str) -> JobSpec:
    return load_spec({**BASE, "storage": {"path": str(tmp_path)}}, list(overrides))


def _grad_worker(config: dict) -> None:
    """One GERNE step of the production pieces on a Ray Train worker; rank 0 saves the gradient."""
    import ray.train

    from gerne_ray import methods
    from gerne_ray.distributed import RayTrainContext
    from gerne_ray.loop import Prepared, loss_scale
    from gerne_ray.methods import Batch

    spec = JobSpec.model_validate(config["spec"])
    prepared: Prepared = config["prepared"]
    ds = prepared.dataset
    ctx = RayTrainContext()
    torch.manual_seed(spec.seed)
    model = ctx.prepare_model(build_model("mlp", ds.input_shape, ds.num_classes))
    idx = ds.indices(TRAIN)
    sampler = PairedSampler(ds.y[idx], ds.a[idx], ds.num_classes, ds.num_attributes,
                            spec.optim.batch_size_per_class, spec.method.c, spec.seed,
                            ctx.rank, ctx.world_size)
    method = methods.get(spec.method.name)(spec.method, prepared.stats, ctx)
    method.models = {"model": model}
    local, n_biased = method.draw(sampler)
    rows = torch.as_tensor(idx[local])
    scale = loss_scale(sampler, ctx)
    losses = method.losses(Batch(ds.inputs[rows], torch.tensor(ds.y)[rows], torch.tensor(ds.a)[rows], local,
                                 n_biased, scale))
    method.backward(losses, scale)
    if ctx.rank == 0:
        torch.save([p.grad for p in model.parameters()], config["out"])
    ray.train.report({"done": 1})


def test_two_workers_average_to_the_gradient_over_the_union(ray_cluster, tmp_path):
    import sys

    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    spec = _spec(tmp_path)  # B = 5 per class over 2 workers: shares 3 and 2
    prepared = prepare(spec)
    out = tmp_path / "grad.pt"
    TorchTrainer(
        _grad_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "prepared": prepared, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="grad", storage_path=str(tmp_path)),
    ).fit()
    ddp_grad = torch.load(out, weights_only=True)

    # Single process: the same initial model, the union of both ranks' batches (same seeds).
    ds = prepared.dataset
    idx = ds.indices(TRAIN)
    samplers = [PairedSampler(ds.y[idx], ds.a[idx], 2, 2, 5, 0.5, spec.seed, r, 2) for r in range(2)]
    draws = [(s.biased(), s.less_biased()) for s in samplers]
    union_b = idx[np.concatenate([d[0] for d in draws])]
    union_lb = idx[np.concatenate([d[1] for d in draws])]
    assert len(union_b) == len(union_lb) == 2 * 5
    torch.manual_seed(spec.seed)
    model = build_model("mlp", ds.input_shape, ds.num_classes)
    y = torch.tensor(ds.y)
    loss_b = F.cross_entropy(model(ds.inputs[union_b]), y[union_b])
    loss_lb = F.cross_entropy(model(ds.inputs[union_lb]), y[union_lb])
    (2.0 * loss_lb - 1.0 * loss_b).backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    got = torch.cat([g.flatten() for g in ddp_grad])
    assert float((got - ref).norm() / ref.norm()) < 1e-6


def _weights(run_dir: Path) -> dict:
    ckpts = sorted((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name)
    path = ckpts[-1] / "checkpoint.pt" if ckpts else run_dir / "checkpoint.pt"
    return load_state(path)["model"]


def test_resume_continues_exactly_on_two_workers(ray_cluster, tmp_path, capsys):
    straight = _spec(tmp_path, "name=straight", "optim.epochs=4")
    train(straight)
    spec_path = tmp_path / "resumed.yaml"
    spec_path.write_text(_spec(tmp_path, "name=resumed").model_dump_json())
    assert main(["train", str(spec_path)]) == 0  # 2 epochs, through the CLI
    assert "resumed" in capsys.readouterr().out
    result = train(load_spec(spec_path, ["optim.epochs=4"]))  # same name: resumes at epoch 3
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = pq.read_table(tmp_path / "resumed" / "history.parquet").to_pylist()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert result["epochs_run"] == 4


def _train_workers(ray) -> list[psutil.Process]:
    node = ray._private.worker._global_node
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [p for p in raylet.children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, tmp_path):
    spec = _spec(tmp_path, "name=ft", "optim.epochs=6", "optim.steps_per_epoch=150",
                 "scaling.max_failures=1", "method.paired_diagnostics=true")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(spec)))
    thread.start()
    run_dir = tmp_path / "ft"
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        if any(p.is_dir() for p in run_dir.glob("checkpoint_*")):
            workers = _train_workers(ray_cluster)
            if len(workers) == 2:
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "a worker was killed mid-run"
    result = outcome["result"]
    assert result["status"] == "completed"
    history = pq.read_table(run_dir / "history.parquet").to_pylist()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["grad_cosine"]) and -1 <= r["grad_cosine"] <= 1 for r in history)


def test_a_user_error_on_the_workers_is_one_line(ray_cluster, tmp_path):
    from gerne_ray.errors import GerneError

    with pytest.raises(GerneError, match="scaling.num_workers"):
        train(_spec(tmp_path, "name=big", "scaling.num_workers=8"))


def test_batch_smaller_than_the_worker_count_is_refused_before_ray_starts(tmp_path):
    from gerne_ray.errors import GerneError

    with pytest.raises(GerneError, match="optim.batch_size_per_class"):
        train(_spec(tmp_path, "name=tiny", "optim.batch_size_per_class=1"))
    assert not (tmp_path / "tiny").exists()


def test_a_gerne_error_raised_on_a_worker_comes_back_as_itself():
    from gerne_ray.distributed import user_error
    from gerne_ray.errors import GerneError

    assert user_error(RuntimeError("an ordinary failure")) is None
    # Ray reports a worker's exception with its traceback as text, wrapped in its own errors
    worker_failure = RuntimeError("Training failed.\nTraceback ...\ngerne_ray.errors.GerneError: "
                                  "scaling.num_workers: the checkpoint was written by 3 workers\n")
    outer = RuntimeError("fit failed")
    outer.__cause__ = worker_failure
    found = user_error(outer)
    assert isinstance(found, GerneError)
    assert str(found) == "scaling.num_workers: the checkpoint was written by 3 workers"
    direct = GerneError("x: y")
    chained = RuntimeError("z")
    chained.__context__ = direct
    assert user_error(chained) is direct
