"""Group DRO: the q update and robust loss by hand, data parallelism, resume, training, params, search."""

import json
import threading

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from gerne_ray import methods
from gerne_ray.errors import GerneError
from gerne_ray.groups import GroupStats
from gerne_ray.loop import WorkerContext, load_state, train_loop
from gerne_ray.methods.base import Batch
from gerne_ray.methods.groupdro import ETA_RANGE, GroupDRO, GroupDROParams
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, train

COUNTS = np.array([[50, 5], [3, 40]])  # training group counts n_g, g = y * 2 + a
X = np.array([[1.0, 0.5], [0.2, -1.0], [-0.7, 0.3], [0.4, 0.9], [-1.2, -0.4], [0.8, -0.6]])
Y = np.array([0, 0, 0, 1, 1, 1])
A = np.array([0, 0, 1, 1, 1, 1])  # groups 0, 0, 1, 3, 3, 3: group 2 = (1, 0) is absent from the batch
W = np.array([[0.3, -0.2], [-0.1, 0.4]])
BIAS = np.array([0.05, -0.1])


def linear_model() -> nn.Module:
    """The fixed float64 linear model of the hand example."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W))
        model.bias.copy_(torch.tensor(BIAS))
    return model


def method_for(params: GroupDROParams, counts=COUNTS, ctx=None) -> GroupDRO:
    """A GroupDRO on the hand example's model and training counts."""
    method = GroupDRO(params, GroupStats(counts), ctx or WorkerContext())
    method.models = {"model": linear_model()}
    return method


def batch_of(rows, scale: float = 1.0) -> Batch:
    """The hand example's rows as a Batch."""
    rows = np.asarray(rows)
    return Batch(torch.tensor(X[rows]), torch.tensor(Y[rows]), torch.tensor(A[rows]), rows, 0, scale)


def hand_step(q, rows, eta, adj, counts=COUNTS):
    """numpy: new q, robust loss and its gradient wrt W and bias, as the authors' compute_robust_loss."""
    x, y, g = X[rows], Y[rows], Y[rows] * 2 + A[rows]
    logits = x @ W.T + BIAS
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = -np.log(p[np.arange(len(y)), y])
    n_batch = np.array([np.sum(g == k) for k in range(4)])
    group_loss = np.array([ce[g == k].mean() if n_batch[k] else 0.0 for k in range(4)])
    n = counts.ravel().astype(float)
    adjusted = group_loss + np.where(n > 0, adj / np.sqrt(np.maximum(n, 1)), 0.0)
    q = q * np.exp(eta * adjusted)
    q = q / q.sum()
    robust = q @ group_loss
    w = q[g] / n_batch[g]  # d robust / d ce_i
    dlogits = w[:, None] * (p - np.eye(2)[y])
    return q, robust, dlogits.T @ x, dlogits.sum(0), group_loss


@pytest.mark.parametrize("adj", [0.0, 2.0])
def test_one_step_matches_the_hand_computation(adj):
    method = method_for(GroupDROParams(eta=0.3, adj=adj))
    rows = np.arange(6)
    q, robust, grad_w, grad_b, group_loss = hand_step(np.full(4, 0.25), rows, 0.3, adj)
    out = method.losses(batch_of(rows))
    out["loss"].backward()
    model = method.models["model"]
    np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-12)
    assert out["loss"].item() == pytest.approx(robust, rel=1e-12)
    np.testing.assert_allclose(model.weight.grad.numpy(), grad_w, rtol=1e-12)
    np.testing.assert_allclose(model.bias.grad.numpy(), grad_b, rtol=1e-12)
    assert out["worst_group_loss"].item() == pytest.approx(group_loss.max(), rel=1e-12)
    assert out["q_max"].item() == pytest.approx(q.max(), rel=1e-12)
    assert q[2] < 0.25 and q.argmax() == group_loss.argmax(), "the absent group loses mass, the worst gains"
    # a second step starts from the updated q
    q2, robust2, *_ = hand_step(q, np.array([0, 2, 3]), 0.3, adj)
    assert method.losses(batch_of([0, 2, 3]))["loss"].item() == pytest.approx(robust2, rel=1e-12)
    np.testing.assert_allclose(method.q.numpy(), q2, rtol=1e-12)


def test_empty_training_group_stays_out_of_q_and_large_eta_does_not_overflow():
    counts = np.array([[50, 5], [0, 40]])  # group (1, 0) has no training sample
    method = method_for(GroupDROParams(eta=2000.0, adj=3.0), counts)
    np.testing.assert_array_equal(method.q.numpy(), [1 / 3, 1 / 3, 0.0, 1 / 3])
    rows = np.arange(6)
    out = method.losses(batch_of(rows))
    q = method.q.numpy()
    assert np.all(np.isfinite(q)) and q[2] == 0.0 and q.sum() == pytest.approx(1.0)
    # no overflow: the same q as the hand update in log space
    *_, group_loss = hand_step(np.full(4, 0.25), rows, 1.0, 0.0)
    n = counts.ravel().astype(float)
    logits = np.where(n > 0, 2000.0 * (group_loss + 3.0 / np.sqrt(np.maximum(n, 1))), -np.inf)
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(q, expected / expected.sum(), rtol=1e-9, atol=1e-300)
    assert torch.isfinite(out["loss"])


class TwoRanks:
    """A worker context of a 2-rank job run in two threads: all_reduce_sum really sums both ranks' tensors."""

    def __init__(self, rank: int, barrier: threading.Barrier, slots: list) -> None:
        self.rank, self.world_size, self.device = rank, 2, torch.device("cpu")
        self.barrier, self.slots = barrier, slots

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the two ranks."""
        self.slots[self.rank] = tensor.clone()
        self.barrier.wait()
        total = self.slots[0] + self.slots[1]
        self.barrier.wait()
        return total


def test_two_ranks_share_q_and_their_averaged_gradient_is_the_union_gradient():
    params = GroupDROParams(eta=0.5, adj=1.0)
    # B = 3 per class over 2 workers: rank 0 draws 2 per class, rank 1 one (scale = share * W / B)
    steps = [([0, 1, 3, 4], [2, 5]), ([2, 0, 5, 3], [1, 4])]
    scales = (2 * 2 / 3, 1 * 2 / 3)
    barrier, slots = threading.Barrier(2, timeout=30), [None, None]
    ranks = [method_for(params, ctx=TwoRanks(r, barrier, slots)) for r in range(2)]
    single = method_for(params)
    for rows in steps:
        out: list = [None, None]

        def run(r, rows=rows, out=out):
            out[r] = ranks[r].losses(batch_of(rows[r], scales[r]))

        threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in range(2):  # the loop back-propagates scale * loss
            ranks[r].models["model"].zero_grad()
            (scales[r] * out[r]["loss"]).backward()
        union = single.losses(batch_of(rows[0] + rows[1]))
        single.models["model"].zero_grad()
        union["loss"].backward()
        assert torch.equal(ranks[0].q, ranks[1].q)
        torch.testing.assert_close(ranks[0].q, single.q, rtol=1e-14, atol=0)
        for name in ("weight", "bias"):  # DDP averages the ranks' gradients
            ddp = sum(getattr(m.models["model"], name).grad for m in ranks) / 2
            torch.testing.assert_close(ddp, getattr(single.models["model"], name).grad, rtol=1e-12, atol=0)
        # what the loop records, mean over ranks of scale * loss, is the union's robust loss
        recorded = sum(s * o["loss"].item() for s, o in zip(scales, out, strict=True)) / 2
        assert recorded == pytest.approx(union["loss"].item(), rel=1e-12)
        for key in ("worst_group_loss", "q_max"):
            recorded = sum(s * o[key].item() for s, o in zip(scales, out, strict=True)) / 2
            assert recorded == pytest.approx(union[key].item(), rel=1e-12)


SPEC = {
    "name": "g",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "groupdro", "eta": 0.05},
    "optim": {"lr": 0.05, "epochs": 4, "batch_size_per_class": 16, "steps_per_epoch": 20},
}


def test_resume_continues_exactly(tmp_path):
    spec = load_spec({**SPEC, "storage": {"path": str(tmp_path)}})
    prepared = prepare(spec)
    straight = train_loop(spec, prepared, WorkerContext(checkpoint_dir=tmp_path / "straight"))
    two = load_spec(spec, ["optim.epochs=2"])
    assert len(train_loop(two, prepared, WorkerContext(checkpoint_dir=tmp_path / "resumed"))) == 2
    resumed = train_loop(spec, prepared, WorkerContext(checkpoint_dir=tmp_path / "resumed"))
    keys = ("epoch", "loss", "worst_group_loss", "q_max", "val_gba", "test_wga")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    a = load_state(tmp_path / "straight" / "checkpoint.pt")
    b = load_state(tmp_path / "resumed" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["method"]["q"], b["method"]["q"]) and a["samplers"] == b["samplers"]
    assert not torch.equal(a["method"]["q"], torch.full((4,), 0.25, dtype=torch.float64)), "q moved"


def test_trains_end_to_end_and_beats_erm_on_the_worst_group(tmp_path):
    result = train(load_spec({**SPEC, "storage": {"path": str(tmp_path)}}))
    assert result["status"] == "completed" and result["test_avg"] > 0.6, "better than chance on 2 classes"
    on_disk = json.loads((tmp_path / "g" / "result.json").read_text())
    assert on_disk["eta"] == 0.05 and on_disk["adj"] == 0.0 and on_disk["params"]["sampling"] == "balanced"
    state = load_state(tmp_path / "g" / "checkpoint.pt")
    for row in state["history"]:
        assert {"loss", "worst_group_loss", "q_max"} <= row.keys()
        assert row["worst_group_loss"] >= row["loss"] > 0 and 0.25 < row["q_max"] <= 1
    erm = {**SPEC, "name": "erm", "method": {"name": "erm"}, "storage": {"path": str(tmp_path)}}
    erm = train(load_spec(erm))
    assert result["test_wga"] > erm["test_wga"] + 0.15, "the worst group gains over ERM"


def test_params_are_checked():
    base = {"name": "p", "data": {"dataset": "synthetic"}}
    spec = load_spec({**base, "method": {"name": "groupdro"}})
    assert (spec.method.eta, spec.method.adj, spec.method.sampling) == (0.01, 0.0, "balanced")
    for bad, field in (({"etta": 0.1}, "etta"), ({"eta": 0.0}, "eta"), ({"eta": -1}, "eta"),
                       ({"adj": -0.5}, "adj"), ({"sampling": "uniform"}, "sampling")):
        with pytest.raises(GerneError, match=field) as err:
            load_spec({**base, "method": {"name": "groupdro", **bad}})
        assert "groupdro" in str(err.value) or "method" in str(err.value)
    with pytest.raises(GerneError, match="groupdro needs the training split's attribute labels"):
        load_spec({**base, "data": {"dataset": "synthetic", "attributes": "unknown"},
                   "method": {"name": "groupdro"}})
    assert methods.get("groupdro") is GroupDRO and GroupDRO.uses_groups and GroupDRO.needs_train_attributes


def test_sampling_picks_the_balanced_or_the_biased_batch():
    class Sampler:
        def biased(self):
            return np.array([1])

        def less_biased(self):
            return np.array([2])

    assert method_for(GroupDROParams()).draw(Sampler())[0].tolist() == [2]
    assert method_for(GroupDROParams(sampling="biased")).draw(Sampler())[0].tolist() == [1]


def test_state_round_trips_and_a_foreign_q_is_refused():
    method = method_for(GroupDROParams(eta=0.3))
    method.losses(batch_of(np.arange(6)))
    other = method_for(GroupDROParams(eta=0.3))
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.q, method.q)
    with pytest.raises(GerneError, match="q has 2 groups"):
        other.load_state_dict({"q": torch.tensor([0.5, 0.5])})


def test_suggest_draws_eta_log_uniform_inside_its_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    etas = []
    for _ in range(200):
        trial = study.ask()
        config = GroupDRO.suggest(trial, GroupStats(COUNTS), None, GroupDRO.Params())
        assert set(config) == {"eta"} and trial.distributions["eta"].log
        etas.append(config["eta"])
    assert ETA_RANGE[0] <= min(etas) and max(etas) <= ETA_RANGE[1]
    assert np.mean(np.array(etas) < 1e-2) == pytest.approx(0.5, abs=0.1), "log-uniform: half below 0.01"
    assert GroupDRO.suggest(optuna.trial.FixedTrial({"eta": 0.02}), GroupStats(COUNTS), None,
                            GroupDRO.Params()) == {"eta": 0.02}
    assert GroupDRO.searchable() and "eta" in GroupDRO.search_params
    described = GroupDRO.describe(GroupDROParams(eta=0.02, adj=1.0), GroupStats(COUNTS))
    assert described == {"eta": 0.02, "adj": 1.0}
