"""One GERNE step all-reduces one gradient: the same bytes and buckets as one ERM step (DDP, gloo, CPU).

Two real processes wrap the same model in DistributedDataParallel and count, with a communication
hook around the default all-reduce hook, what each backward pass all-reduces. DDP's default
broadcast_buffers=True also broadcasts BatchNorm buffers at each forward; that is a broadcast, not
the gradient all-reduce, and the hook only ever sees gradient buckets.
"""

import copy
import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from gerne_ray.models import cnn, mlp
from gerne_ray.step import gerne_losses

WORLD = 2
BETA = 0.8
N_B, N_LB = 6, 4  # per rank; unequal on purpose


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {"mlp": (mlp(12, 5, hidden=16).double(), (12,)), "cnn": (cnn(3, 5, width=4).double(), (3, 8, 8))}


def _batches(rank: int, shape: tuple[int, ...], step: int):
    g = torch.Generator().manual_seed(100 * rank + step)
    x_b = torch.randn(N_B, *shape, generator=g, dtype=torch.float64)
    x_lb = torch.randn(N_LB, *shape, generator=g, dtype=torch.float64) + 1.0
    return x_b, torch.randint(0, 5, (N_B,), generator=g), x_lb, torch.randint(0, 5, (N_LB,), generator=g)


def _counting_hook(counter: dict[str, int], bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    counter["calls"] += 1
    counter["bytes"] += buffer.numel() * buffer.element_size()
    return allreduce_hook(None, bucket)


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def _step(ddp: DistributedDataParallel, counter: dict[str, int], batches, kind: str) -> dict[str, int]:
    """One backward of an ERM or a GERNE step; what the hook all-reduced during it."""
    x_b, y_b, x_lb, y_lb = batches
    ddp.zero_grad(set_to_none=True)
    counter.update(calls=0, bytes=0)
    if kind == "erm":  # one batch of the same total size
        loss = F.cross_entropy(ddp(torch.cat([x_b, x_lb])), torch.cat([y_b, y_lb]))
    else:
        loss = gerne_losses(ddp, x_b, y_b, x_lb, y_lb, BETA, "auto").loss
    loss.backward()
    return dict(counter)


def _run_model(rank: int, model: nn.Module, shape: tuple[int, ...]) -> dict:
    ddp = DistributedDataParallel(model)
    counter = {"calls": 0, "bytes": 0}
    ddp.register_comm_hook(counter, _counting_hook)
    _step(ddp, counter, _batches(rank, shape, 0), "erm")  # warm-up: DDP rebuilds its buckets after it
    erm = _step(ddp, counter, _batches(rank, shape, 1), "erm")
    # this rank's local extrapolated gradient, without DDP, on a copy of the same weights
    local = copy.deepcopy(ddp.module)
    local.zero_grad(set_to_none=True)
    gerne_losses(local, *_batches(rank, shape, 2), BETA, "auto").loss.backward()
    gerne = _step(ddp, counter, _batches(rank, shape, 2), "gerne")
    return {
        "erm": erm,
        "gerne": gerne,
        "numel": sum(p.numel() for p in model.parameters()),
        "local_grad": _flat_grad(local),
        "ddp_grad": _flat_grad(ddp.module),
    }


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        results = {name: _run_model(rank, model, shape) for name, (model, shape) in _models().items()}
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(results, f)
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp_env:
        if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
            mp_env.setenv("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback interface (Linux)
        # spawn, not fork: each rank a fresh interpreter, as on a cluster; the file store needs no port
        mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    ranks = []
    for rank in range(WORLD):
        with open(tmp / f"rank{rank}.pkl", "rb") as f:
            ranks.append(pickle.load(f))
    return ranks


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_gerne_step_all_reduces_what_an_erm_step_does(ddp_results, name):
    for rank in ddp_results:
        r = rank[name]
        erm, gerne = r["erm"], r["gerne"]
        assert gerne == erm, (gerne, erm)
        assert gerne["calls"] >= 1
        # exactly one copy of the gradient: every float64 parameter once
        assert gerne["bytes"] == r["numel"] * 8


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_all_reduced_gradient_is_the_mean_of_the_local_extrapolated_gradients(ddp_results, name):
    local = [rank[name]["local_grad"] for rank in ddp_results]
    expected = sum(local) / WORLD
    assert float((local[0] - local[1]).norm()) > 1e-3 * float(expected.norm())  # ranks really differ
    for rank in ddp_results:
        got = rank[name]["ddp_grad"]
        assert float((got - expected).norm() / expected.norm()) < 1e-6
