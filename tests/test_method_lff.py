"""LfF: GCE, the per-sample loss averages and weights by hand, duplicates, data parallel, resume, training."""

import json
import threading

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from gerne_ray import methods
from gerne_ray.errors import GerneError
from gerne_ray.groups import GroupStats
from gerne_ray.loop import CHECKPOINT_FILE, WorkerContext, load_state, train_loop
from gerne_ray.methods.base import Batch
from gerne_ray.methods.lff import LfF, LfFParams, SampleLossEMA, generalized_ce
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, train

ALPHA = 0.7
KEYS = ("loss", "loss_biased_gce", "loss_debiased_weighted", "loss_biased_ce", "loss_debiased_ce",
        "weight_mean")


def _spec(tmp_path, **overrides):
    raw = {
        "name": "lff",
        "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
        "method": {"name": "lff"},
        "optim": {"lr": 0.05, "epochs": 4, "batch_size_per_class": 8, "steps_per_epoch": 6},
        "storage": {"path": str(tmp_path)},
    }
    raw.update(overrides)
    return load_spec(raw)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- generalized cross-entropy -----------------------------------------------------------------------

@pytest.mark.parametrize("q", [0.7, 0.3, 1.0])
def test_gce_value_and_gradient_match_the_hand_formula(q):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3)) * 2
    y = np.array([0, 2, 1, 1, 0])
    p = _softmax(z)
    p_y = p[np.arange(5), y]
    value = -np.log(p_y) * q * p_y**q  # module/loss.py: CE * (p_y ** q) * q, the weight detached
    onehot = np.eye(3)[y]
    grad = (q * p_y**q)[:, None] * (p - onehot)  # d/dz of CE times the constant weight

    logits = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = generalized_ce(logits, torch.tensor(y), q)
    out.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), value, rtol=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), grad, rtol=1e-10, atol=1e-14)


# -- the averages and the weights, by hand -----------------------------------------------------------

def test_two_steps_of_averages_and_weights_by_hand():
    ema = SampleLossEMA(num_rows=6, num_classes=2, alpha=ALPHA)
    # step 1: every row fresh, so its average is its loss (1 - alpha * 0 = 1)
    ema.update(np.array([0, 3, 4]), np.array([0, 1, 1]), np.array([0.5, 2.0, 1.0]),
               np.array([1.0, 0.5, 0.25]))
    w1 = ema.weights(np.array([0, 3, 4]), torch.tensor([0, 1, 1]))
    # class maxima: b: class 0 0.5, class 1 2.0; d: class 0 1.0, class 1 0.5
    expected1 = [1 / (1 + 1 + 1e-8), 1 / (1 + 1 + 1e-8), 0.5 / (0.5 + 0.5 + 1e-8)]
    np.testing.assert_allclose(w1.numpy(), expected1, rtol=1e-15)
    # step 2: rows 0 and 4 updated, row 1 fresh
    ema.update(np.array([0, 1, 4]), np.array([0, 0, 1]), np.array([1.5, 0.2, 3.0]),
               np.array([0.1, 0.4, 0.05]))
    b0, b4 = 0.7 * 0.5 + 0.3 * 1.5, 0.7 * 1.0 + 0.3 * 3.0  # 0.8, 1.6
    d0, d4 = 0.7 * 1.0 + 0.3 * 0.1, 0.7 * 0.25 + 0.3 * 0.05  # 0.73, 0.19
    np.testing.assert_allclose(ema.loss_b.numpy(), [b0, 0.2, 0, 2.0, b4, 0], rtol=1e-15)
    np.testing.assert_allclose(ema.loss_d.numpy(), [d0, 0.4, 0, 0.5, d4, 0], rtol=1e-15)
    assert ema.updated.tolist() == [True, True, False, True, True, False]
    assert ema.labels.tolist() == [0, 0, -1, 1, 1, -1]
    # class maxima: b: class 0 max(0.8, 0.2), class 1 max(2.0 (row 3, not drawn now), 1.6); d: 0.73, 0.5
    w2 = ema.weights(np.array([0, 1, 4]), torch.tensor([0, 0, 1]))
    nb = [b0 / b0, 0.2 / b0, b4 / 2.0]
    nd = [d0 / d0, 0.4 / d0, d4 / 0.5]
    expected2 = [b / (b + d + 1e-8) for b, d in zip(nb, nd, strict=True)]
    np.testing.assert_allclose(w2.numpy(), expected2, rtol=1e-14)


def test_duplicate_rows_last_occurrence_wins_from_the_averages_before_the_step():
    ema = SampleLossEMA(num_rows=6, num_classes=2, alpha=ALPHA)
    ema.update(np.array([2]), np.array([1]), np.array([1.0]), np.array([2.0]))
    # row 2 three times (seen), row 5 twice (fresh), row 0 once
    ema.update(np.array([2, 5, 2, 0, 5, 2]), np.array([1, 1, 1, 0, 1, 1]),
               np.array([0.3, 0.2, 0.9, 0.7, 0.4, 0.6]), np.array([0.1, 0.5, 0.2, 0.3, 0.8, 0.4]))
    # each occurrence computed from the value before the step, the last one stored
    assert ema.loss_b[2].item() == pytest.approx(0.7 * 1.0 + 0.3 * 0.6, rel=1e-15)  # not 0.9's, not chained
    assert ema.loss_d[2].item() == pytest.approx(0.7 * 2.0 + 0.3 * 0.4, rel=1e-15)
    assert ema.loss_b[5].item() == pytest.approx(0.4, rel=1e-15)  # fresh: the last loss itself
    assert ema.loss_d[5].item() == pytest.approx(0.8, rel=1e-15)
    assert ema.loss_b[0].item() == pytest.approx(0.7, rel=1e-15)
    w = ema.weights(np.array([2, 5, 2, 0, 5, 2]), torch.tensor([1, 1, 1, 0, 1, 1]))
    assert w[0] == w[2] == w[5] and w[1] == w[4], "every occurrence reads the stored average"
    top_b, top_d = max(0.88, 0.4), max(1.52, 0.8)
    nb, nd = 0.88 / top_b, 1.52 / top_d
    assert w[0].item() == pytest.approx(nb / (nb + nd + 1e-8), rel=1e-14)


class AuthorsEMA:
    """alinlab/LfF util.py EMA, verbatim but for the dtype argument (float32 by default there)."""

    def __init__(self, label, alpha=0.9):
        self.label = label
        self.alpha = alpha
        self.parameter = torch.zeros(label.size(0), dtype=torch.float64)
        self.updated = torch.zeros(label.size(0), dtype=torch.float64)

    def update(self, data, index):
        self.parameter[index] = self.alpha * self.parameter[index] + (
            1 - self.alpha * self.updated[index]) * data
        self.updated[index] = 1

    def max_loss(self, label):
        label_index = np.where(self.label == label)[0]
        return self.parameter[label_index].max()


def test_weights_equal_the_authors_code_with_every_label_known_up_front():
    rng = np.random.default_rng(1)
    n, k = 40, 3
    labels = rng.integers(0, k, size=n)
    ema_b = AuthorsEMA(torch.tensor(labels), alpha=ALPHA)
    ema_d = AuthorsEMA(torch.tensor(labels), alpha=ALPHA)
    mine = SampleLossEMA(n, k, ALPHA)
    for _ in range(12):
        index = torch.tensor(rng.choice(n, size=7, replace=False))  # the authors' batches: no duplicates
        label = torch.tensor(labels)[index]
        loss_b, loss_d = torch.tensor(rng.exponential(size=7)), torch.tensor(rng.exponential(size=7))
        # train.py, the per-step weight computation
        ema_b.update(loss_b, index)
        ema_d.update(loss_d, index)
        lb, ld = ema_b.parameter[index].clone(), ema_d.parameter[index].clone()
        for c in range(k):
            class_index = np.where(label == c)[0]
            lb[class_index] /= ema_b.max_loss(c)
            ld[class_index] /= ema_d.max_loss(c)
        authors = lb / (lb + ld + 1e-8)
        mine.update(index.numpy(), label.numpy(), loss_b.numpy(), loss_d.numpy())
        np.testing.assert_allclose(mine.weights(index.numpy(), label).numpy(), authors.numpy(), rtol=1e-13)
    np.testing.assert_allclose(mine.loss_b.numpy(), ema_b.parameter.numpy(), rtol=1e-15)
    assert torch.equal(mine.updated.double(), ema_d.updated)


def test_a_class_whose_averages_are_all_zero_gets_weight_zero_not_nan():
    ema = SampleLossEMA(3, 2, ALPHA)
    ema.update(np.array([0, 1]), np.array([0, 1]), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    w = ema.weights(np.array([0, 1]), torch.tensor([0, 1]))
    assert torch.isfinite(w).all() and w[0].item() == 0.0


# -- the step: the two models' losses ------------------------------------------------------------------

def _linear(seed, d=4, k=2):
    torch.manual_seed(seed)
    return nn.Linear(d, k).double()


def _method(ctx=None, n_rows=8, **params):
    stats = GroupStats(np.array([[n_rows // 2 - 1, 1], [1, n_rows // 2 - 1]]))
    method = LfF(LfFParams(**params), stats, ctx or WorkerContext())
    method.models = {"model": _linear(0), "biased": _linear(1)}
    return method


def test_losses_of_two_steps_equal_a_numpy_reference():
    q = 0.7
    method = _method(q=q)
    w_d, b_d = (p.detach().numpy().copy() for p in method.models["model"].parameters())
    w_b, b_b = (p.detach().numpy().copy() for p in method.models["biased"].parameters())
    rng = np.random.default_rng(2)
    avg_b, avg_d, label = np.zeros(8), np.zeros(8), np.full(8, -1)
    for rows in (np.array([0, 1, 5, 6]), np.array([1, 2, 6, 7])):
        x = rng.normal(size=(4, 4))
        y = np.array([0, 0, 1, 1])
        # numpy reference (models fixed: no optimiser step here)
        p_b, p_d = _softmax(x @ w_b.T + b_b), _softmax(x @ w_d.T + b_d)
        ce_b, ce_d = -np.log(p_b[np.arange(4), y]), -np.log(p_d[np.arange(4), y])
        for i, r in enumerate(rows):
            fresh = label[r] < 0
            avg_b[r] = ce_b[i] if fresh else ALPHA * avg_b[r] + (1 - ALPHA) * ce_b[i]
            avg_d[r] = ce_d[i] if fresh else ALPHA * avg_d[r] + (1 - ALPHA) * ce_d[i]
            label[r] = y[i]
        nb = avg_b[rows] / np.array([avg_b[label == c].max() for c in y])
        nd = avg_d[rows] / np.array([avg_d[label == c].max() for c in y])
        weight = nb / (nb + nd + 1e-8)
        gce = np.mean(ce_b * q * p_b[np.arange(4), y] ** q)
        weighted = np.mean(ce_d * weight)

        batch = Batch(torch.tensor(x), torch.tensor(y), torch.zeros(4, dtype=torch.long), rows, 0, 1.0)
        out = method.losses(batch)
        assert set(out) == set(KEYS) and all(v.dim() == 0 for v in out.values())
        assert out["loss"].item() == pytest.approx(gce + weighted, rel=1e-12)
        assert out["loss_biased_gce"].item() == pytest.approx(gce, rel=1e-12)
        assert out["loss_debiased_weighted"].item() == pytest.approx(weighted, rel=1e-12)
        assert out["weight_mean"].item() == pytest.approx(weight.mean(), rel=1e-12)
        # the debiased model's gradient is that of the weighted CE only, the biased one's of GCE only
        for net in method.models.values():
            net.zero_grad()
        out["loss"].backward()
        onehot = np.eye(2)[y]
        g_d = ((p_d - onehot) * weight[:, None]).T @ x / 4
        g_b = ((p_b - onehot) * (q * p_b[np.arange(4), y] ** q)[:, None]).T @ x / 4
        np.testing.assert_allclose(method.models["model"].weight.grad.numpy(), g_d, rtol=1e-10)
        np.testing.assert_allclose(method.models["biased"].weight.grad.numpy(), g_b, rtol=1e-10)


class _ThreadCtx(WorkerContext):
    """One of several in-process 'ranks' run as threads, all_gather through a barrier."""

    def __init__(self, rank, world_size, slots, barrier):
        super().__init__()
        self.rank, self.world_size, self.slots, self.barrier = rank, world_size, slots, barrier

    def all_gather(self, obj):
        self.slots[self.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


def test_data_parallel_ranks_hold_the_same_averages_as_one_worker_on_the_union():
    rng = np.random.default_rng(3)
    steps = []
    for _ in range(3):
        # rank 0's and rank 1's rows; row 2 is on both ranks in step 0: rank 1's occurrence wins
        rows = [np.array([2, 1, 5, 6]), np.array([2, 3, 7, 4])] if not steps else \
            [rng.integers(0, 4, 2).tolist() + rng.integers(4, 8, 2).tolist() for _ in range(2)]
        steps.append([(np.asarray(r), rng.normal(size=(4, 4))) for r in rows])
    y_of = np.array([0, 0, 0, 0, 1, 1, 1, 1])

    slots, barrier = [None, None], threading.Barrier(2, timeout=60)
    ranks = [_method(_ThreadCtx(r, 2, slots, barrier)) for r in range(2)]
    results = [[], []]

    def run(r):
        for step in steps:
            rows, x = step[r]
            y = torch.tensor(y_of[rows])
            batch = Batch(torch.tensor(x), y, torch.zeros(4, dtype=torch.long), rows, 0, 1.0)
            out = ranks[r].losses(batch)
            results[r].append(out["loss_debiased_weighted"].item())

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(r) == len(steps) for r in results), "both ranks finished every step"

    single = _method()
    for i, step in enumerate(steps):
        rows = np.concatenate([step[0][0], step[1][0]])
        x = np.concatenate([step[0][1], step[1][1]])
        out = single.losses(Batch(torch.tensor(x), torch.tensor(y_of[rows]), torch.zeros(8, dtype=torch.long),
                                  rows, 0, 1.0))
        # equal shares: the union's mean is the mean of the ranks' means
        assert out["loss_debiased_weighted"].item() == pytest.approx(np.mean([results[0][i], results[1][i]]),
                                                                     rel=1e-12)
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0].state_dict()[key], value), key
        assert torch.equal(ranks[1].state_dict()[key], value), key


# -- the loop: resume, training mode, end to end -----------------------------------------------------------

def _final(path):
    state = load_state(path / CHECKPOINT_FILE)
    return state["model"], state["aux_models"]["biased"], state["method"], state["history"]


def test_resume_after_two_epochs_equals_four_epochs_straight(tmp_path):
    spec4 = _spec(tmp_path)
    spec2 = load_spec(spec4, ["optim.epochs=2"])
    prepared = prepare(spec4)
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = train_loop(spec4, prepared, WorkerContext(checkpoint_dir=tmp_path / "straight"))
    first = train_loop(spec2, prepared, WorkerContext(checkpoint_dir=tmp_path / "resumed"))
    assert len(first) == 2
    resumed = train_loop(spec4, prepared, WorkerContext(checkpoint_dir=tmp_path / "resumed"))
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for key in KEYS + ("val_gba", "test_avg"):
        assert [r[key] for r in resumed] == [r[key] for r in straight], key
    model_a, biased_a, method_a, _ = _final(tmp_path / "straight")
    model_b, biased_b, method_b, _ = _final(tmp_path / "resumed")
    for a, b in ((model_a, model_b), (biased_a, biased_b), (method_a, method_b)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert method_a["updated"].any() and (method_a["ema_b"] > 0).any()
    first_key = next(iter(model_a))
    assert not torch.equal(model_a[first_key], biased_a[first_key]), "two networks, trained differently"


def test_both_models_train_mode_during_steps_and_the_debiased_one_is_evaluated(tmp_path, monkeypatch):
    seen, evaluated = [], []
    original = LfF.losses

    def spy(self, batch):
        seen.append((self.models["model"].training, self.models["biased"].training))
        return original(self, batch)

    monkeypatch.setattr(LfF, "losses", spy)
    monkeypatch.setattr(LfF, "eval_model", lambda self, model, dataset: evaluated.append(model) or model)
    spec = _spec(tmp_path, optim={"lr": 0.05, "epochs": 2, "batch_size_per_class": 4, "steps_per_epoch": 2})
    made = []
    original_aux = LfF.aux_models

    def record(self, build):
        made.append(self)
        return original_aux(self, build)

    monkeypatch.setattr(LfF, "aux_models", record)
    train_loop(spec, prepare(spec))
    assert seen == [(True, True)] * 4
    method = made[0]
    assert all(m is method.models["model"] for m in evaluated) and len(evaluated) == 2
    assert all(m is not method.models["biased"] for m in evaluated)


def test_lff_trains_end_to_end_and_learns(tmp_path):
    spec = _spec(tmp_path, optim={"lr": 0.05, "epochs": 3, "batch_size_per_class": 16})
    result = train(spec)
    assert result["status"] == "completed"
    assert result["method"] == "lff" and result["q"] == 0.7 and result["ema_alpha"] == 0.7
    assert result["test_avg"] > 0.6, "better than chance on a 2-class task"
    history = pq.read_table(tmp_path / "lff" / "history.parquet").to_pylist()
    for key in KEYS:
        assert all(np.isfinite(r[key]) for r in history), key
    assert all(0 < r["weight_mean"] < 1 for r in history)
    on_disk = json.loads((tmp_path / "lff" / "result.json").read_text())
    assert on_disk["params"] == {"name": "lff", "q": 0.7, "ema_alpha": 0.7}


# -- params, search, registry, state -----------------------------------------------------------------------

def test_unknown_key_is_refused_naming_the_method(tmp_path):
    with pytest.raises(GerneError, match="lff"):
        _spec(tmp_path, method={"name": "lff", "beta": 1.0})


@pytest.mark.parametrize("field, bad", [("q", 0.0), ("q", 1.01), ("q", -0.5), ("ema_alpha", 1.0),
                                        ("ema_alpha", -0.1), ("q", float("nan"))])
def test_params_out_of_bounds_are_refused(tmp_path, field, bad):
    with pytest.raises(GerneError, match=f"method.{field}"):
        _spec(tmp_path, method={"name": "lff", field: bad})


def test_params_at_the_edges_are_accepted(tmp_path):
    spec = _spec(tmp_path, method={"name": "lff", "q": 1.0, "ema_alpha": 0.0})
    assert (spec.method.q, spec.method.ema_alpha) == (1.0, 0.0)


def test_registry_flags_and_search():
    cls = methods.get("lff")
    assert cls is LfF and cls.Params.model_fields["name"].default == "lff"
    assert not cls.uses_groups and not cls.needs_train_attributes and not cls.needs_val_attributes
    assert not cls.searchable() and cls.search_ranges == {}
    stats = GroupStats(np.array([[5, 1], [1, 5]]))
    assert cls.suggest(optuna.trial.FixedTrial({}), stats, None, cls.Params()) == {}


def test_runs_without_any_attribute_labels(tmp_path):
    spec = _spec(tmp_path, data={"dataset": "synthetic", "conflict_ratio": 0.05, "attributes": "unknown",
                                 "attribute_labels": "none"})
    assert spec.method.name == "lff"


def test_a_checkpoint_of_other_data_is_refused():
    method = _method(n_rows=8)
    other = _method(n_rows=10).state_dict()
    with pytest.raises(GerneError, match="training rows"):
        method.load_state_dict(other)
    state = method.state_dict()
    state["ema_b"][3] = 1.5
    method.load_state_dict(state)
    assert method.ema.loss_b[3].item() == 1.5
