"""DFR: the validation halving, the balanced subsets, the refitted head against sklearn, and runs."""

import inspect
import json
import math

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from gerne_ray import methods
from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.errors import GerneError
from gerne_ray.loop import WorkerContext, evaluate, load_state, model_for, train_loop
from gerne_ray.methods.dfr import (
    C_GRID,
    DFR,
    DFR_TRAIN,
    balanced_subsets,
    fit_head,
    halve_validation,
    last_layer_inputs,
    with_head,
)
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, train

SPEC = {
    "name": "t",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "dfr", "num_retrains": 5},
    "optim": {"lr": 0.05, "epochs": 3, "batch_size_per_class": 16, "steps_per_epoch": 20},
}


def _spec(tmp_path, **sections):
    return load_spec({**SPEC, **sections, "storage": {"path": str(tmp_path)}})


def _l1(C, seed):
    """The authors' LogisticRegression(penalty="l1", C, solver="liblinear") in this sklearn's spelling."""
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed)
    return LogisticRegression(penalty="l1", C=C, solver="liblinear", random_state=seed)


def _dataset(groups_per_split, d=3, num_classes=2, num_attributes=2, seed=0):
    """A GroupedDataset with the given rows per (split, y, a): {(split, y, a): n}."""
    y, a, split = [], [], []
    for (s, gy, ga), n in groups_per_split.items():
        y += [gy] * n
        a += [ga] * n
        split += [s] * n
    n = len(y)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))
    return GroupedDataset("toy", x, np.array(y, dtype=np.int64), np.array(a, dtype=np.int64),
                          np.array(split, dtype=np.int8), np.arange(n, dtype=np.int64), num_classes,
                          num_attributes)


# -- the validation halving --------------------------------------------------------------------

TOY = {(TRAIN, 0, 0): 6, (TRAIN, 1, 1): 6, (TRAIN, 0, 1): 1, (TRAIN, 1, 0): 1,
       (VAL, 0, 0): 9, (VAL, 0, 1): 1, (VAL, 1, 0): 4, (VAL, 1, 1): 7, (TEST, 0, 0): 3, (TEST, 1, 1): 3}


def test_halving_is_stratified_by_group_and_leaves_train_and_test_alone():
    ds = _dataset(TOY)
    before = ds.split.copy()
    half = halve_validation(ds, seed=0)
    assert np.array_equal(ds.split, before), "the input dataset is not modified"
    for (s, gy, ga), n in TOY.items():
        in_group = (ds.y == gy) & (ds.a == ga) & (before == s)
        if s == VAL:  # ceil(n / 2) to the fitting half, the rest stays validation
            assert (half.split[in_group] == DFR_TRAIN).sum() == math.ceil(n / 2)
            assert (half.split[in_group] == VAL).sum() == n // 2
        else:
            assert np.all(half.split[in_group] == s)
    assert half.y is ds.y and half.a is ds.a and half.inputs is ds.inputs
    assert set(np.unique(half.split)) == {TRAIN, VAL, TEST, DFR_TRAIN}


def test_halving_is_deterministic_and_follows_the_seed():
    ds = _dataset(TOY)
    first, again, other = (halve_validation(ds, s).split for s in (0, 0, 1))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    spec = {**SPEC, "name": "x"}
    a, b = (prepare(load_spec(spec)).dataset.split for _ in range(2))
    assert np.array_equal(a, b) and (a == DFR_TRAIN).sum() == 4 * 63  # 4 groups of 125 rows: 63 each


def test_halving_refuses_data_it_cannot_use():
    no_val = {k: v for k, v in TOY.items() if k[0] != VAL}
    with pytest.raises(GerneError, match="no validation samples"):
        halve_validation(_dataset(no_val), 0)
    no_class_1 = {k: v for k, v in TOY.items() if not (k[0] == VAL and k[1] == 1)}
    with pytest.raises(GerneError, match=r"no sample of class\(es\) \[1\]"):
        halve_validation(_dataset(no_class_1), 0)
    with pytest.raises(GerneError, match="split code 3"):
        halve_validation(halve_validation(_dataset(TOY), 0), 0)


# -- the balanced subsets ----------------------------------------------------------------------

def test_balanced_subsets_take_the_smallest_present_group_from_each():
    group = np.array([0] * 7 + [1] * 3 + [3] * 5 + [0, 3])  # group 2 absent; group 1 smallest (3)
    rng = np.random.default_rng(0)
    subsets = balanced_subsets(group, 4, rng)
    assert len(subsets) == 4
    for s in subsets:
        assert np.array_equal(np.bincount(group[s], minlength=4), [3, 3, 0, 3])
        assert len(np.unique(s)) == len(s) and np.array_equal(s, np.sort(s))
        assert set(np.flatnonzero(group == 1)) <= set(s.tolist()), "the smallest group is taken whole"
    assert any(not np.array_equal(subsets[0], s) for s in subsets[1:]), "the retrains draw afresh"
    again = balanced_subsets(group, 4, np.random.default_rng(0))
    assert all(np.array_equal(s, t) for s, t in zip(subsets, again, strict=True))


# -- the head: folded scaler + L1 logistic regression against sklearn -------------------------------

def _raw_features(n, d, seed):
    """Features far from standard: per-dimension offsets and scales, one constant dimension."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=d) + rng.uniform(-3, 3, size=d)
    x[:, -1] = 2.5  # zero variance: StandardScaler leaves its scale at 1
    return x


def _identity_head_model(d, k):
    """A float64 model whose last nn.Linear sees the raw input (its features are the inputs)."""
    return nn.Sequential(nn.Identity(), nn.Linear(d, k)).double()


def test_binary_head_equals_sklearn_on_standardised_features():
    n, d, C, seed = 120, 6, 0.1, 3
    x = _raw_features(n, d, 0)
    y = (x[:, 0] + 0.3 * x[:, 1] + np.random.default_rng(1).normal(size=n) > x[:, 0].mean()).astype(np.int64)
    scaler = StandardScaler().fit(x)
    ref = _l1(C, seed).fit(scaler.transform(x), y)
    assert (ref.coef_ == 0).any(), "L1 with this C zeroes some coefficients"

    weight, bias = fit_head(x, y, [np.arange(n)], 2, C, seed)
    out = with_head(_identity_head_model(d, 2), weight, bias)(torch.from_numpy(x)).detach().numpy()
    z = scaler.transform(x)
    np.testing.assert_allclose(out[:, 1] - out[:, 0], ref.decision_function(z), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(out), 1).numpy(), ref.predict_proba(z),
                               rtol=1e-10, atol=1e-12)
    assert np.array_equal(out.argmax(1), ref.predict(z))
    assert np.array_equal(weight[1] == 0, ref.coef_[0] == 0), "the folded weights keep L1's zeros"


def test_three_class_head_is_one_vs_rest_on_standardised_features():
    n, d, C, seed = 150, 5, 0.5, 0
    x = _raw_features(n, d, 2)
    y = np.digitize(x[:, 0] + 0.5 * np.random.default_rng(3).normal(size=n),
                    np.quantile(x[:, 0], [1 / 3, 2 / 3]))
    z = StandardScaler().fit_transform(x)
    ref = OneVsRestClassifier(_l1(C, seed)).fit(z, y)

    weight, bias = fit_head(x, y, [np.arange(n)], 3, C, seed)
    out = with_head(_identity_head_model(d, 3), weight, bias)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, ref.decision_function(z), rtol=1e-10, atol=1e-10)
    assert np.array_equal(out.argmax(1), ref.predict(z))


def test_head_averages_the_retrains_with_one_scaler_fitted_on_all_rows():
    n, d, C, seed = 100, 4, 0.3, 1
    x = _raw_features(n, d, 4)
    y = (x[:, 1] > np.median(x[:, 1])).astype(np.int64)
    subsets = [np.arange(0, 80), np.arange(20, 100), np.arange(0, 100, 2)]
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    fits = [_l1(C, seed).fit(z[s], y[s]) for s in subsets]
    coef = np.mean([f.coef_[0] for f in fits], axis=0)
    intercept = np.mean([f.intercept_[0] for f in fits])
    assert not np.allclose(fits[0].coef_, fits[1].coef_), "the subsets give different fits"

    weight, bias = fit_head(x, y, subsets, 2, C, seed)
    out = with_head(_identity_head_model(d, 2), weight, bias)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out[:, 1] - out[:, 0], z @ coef + intercept, rtol=1e-10, atol=1e-10)


# -- the network: features, the returned copy ------------------------------------------------------

def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))


def test_features_are_the_last_linear_inputs_in_eval_mode():
    ds = _dataset(TOY)
    net = _net()
    net.train()
    rows = np.array([0, 3, 5, 11, 20, 30])
    feats = last_layer_inputs(net, ds, rows, torch.device("cpu"))
    body = nn.Sequential(*list(net)[:-1]).eval()
    with torch.no_grad():
        expected = body(ds.inputs[torch.as_tensor(rows)]).double().numpy()
    np.testing.assert_array_equal(feats, expected)
    assert net.training, "the model's mode is restored"
    assert not net[-1]._forward_hooks, "the hook is removed"


def test_model_without_a_linear_layer_is_refused():
    with pytest.raises(GerneError, match="last nn.Linear"):
        last_layer_inputs(nn.Sequential(nn.Flatten()), _dataset(TOY), np.array([0]), torch.device("cpu"))


def test_eval_model_is_a_deterministic_copy_with_only_the_last_layer_new():
    ds = halve_validation(_dataset(TOY), 0)
    params = DFR.Params(C=0.7, num_retrains=3)
    method = DFR(params, None, WorkerContext())
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    first, second = method.eval_model(net, ds), method.eval_model(net, ds)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), "the same model gives the same head"
        if not k.startswith("4."):
            assert torch.equal(v, before[k]), f"{k} is copied unchanged"
    assert not torch.equal(first[4].weight, net[4].weight)
    assert first[4].weight.dtype == torch.float32 and first is not net


# -- runs --------------------------------------------------------------------------------------

def test_val_metrics_come_from_the_selection_half_with_the_refitted_head(tmp_path):
    spec = _spec(tmp_path, optim={**SPEC["optim"], "epochs": 1})
    prepared = prepare(spec)
    ds = prepared.dataset
    history = train_loop(spec, prepared, WorkerContext(checkpoint_dir=tmp_path))
    row = history[-1]
    # synthetic's validation has 125 rows per group: 63 fit the head, 62 are scored
    assert sum(g["n"] for g in row["val_groups"]) == len(ds.indices(VAL)) == 4 * 62
    assert sum(g["n"] for g in row["test_groups"]) == len(ds.indices(TEST)) == 1000

    model = model_for(spec, ds)
    model.load_state_dict(load_state(tmp_path / "checkpoint.pt")["model"])
    method = DFR(spec.method, prepared.stats, WorkerContext())
    refitted = method.eval_model(model, ds)
    for split, name in ((VAL, "val"), (TEST, "test")):
        values, table = evaluate(refitted, ds, split, prepared.metric_stats, WorkerContext(), 64)
        assert table.rows() == row[f"{name}_groups"]
        assert values["wga"] == row[f"{name}_wga"] and values["avg"] == row[f"{name}_avg"]
    _, plain = evaluate(model, ds, VAL, prepared.metric_stats, WorkerContext(), 64)
    assert plain.rows() != row["val_groups"], "the loop evaluated the refitted model, not the ERM one"


def test_trains_end_to_end_and_beats_erm_on_worst_group(tmp_path):
    dfr = train(_spec(tmp_path))
    erm = train(_spec(tmp_path, name="erm", method={"name": "erm"}))
    assert dfr["status"] == "completed" and dfr["test_avg"] > 0.65
    assert dfr["test_wga"] > erm["test_wga"] + 0.1, (dfr["test_wga"], erm["test_wga"])
    history = pq.read_table(tmp_path / "t" / "history.parquet").to_pylist()
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in history)
    on_disk = json.loads((tmp_path / "t" / "result.json").read_text())
    assert on_disk["params"] == {"name": "dfr", "C": 1.0, "num_retrains": 5, "seed": 0}
    assert sum(g["n"] for g in on_disk["val_groups"]) == 4 * 62


def test_resume_two_plus_two_equals_four(tmp_path):
    straight = _spec(tmp_path, name="straight", optim={**SPEC["optim"], "epochs": 4, "steps_per_epoch": 5})
    train(straight)
    two = load_spec(straight, ["name=resumed", "optim.epochs=2"])
    train(two)
    train(load_spec(two, ["optim.epochs=4"]))
    a = load_state(tmp_path / "straight" / "checkpoint.pt")
    b = load_state(tmp_path / "resumed" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["method"] == b["method"] == {}
    assert a["samplers"] == b["samplers"]
    timing = ("epoch_time_s", "samples_per_s")
    strip = [[{k: v for k, v in r.items() if k not in timing} for r in s["history"]] for s in (a, b)]
    assert strip[0] == strip[1] and [r["epoch"] for r in strip[1]] == [1, 2, 3, 4]


def test_unknown_training_attributes_with_validation_labels_run(tmp_path):
    spec = _spec(tmp_path, data={**SPEC["data"], "attributes": "unknown", "attribute_labels": "val_only"},
                 optim={**SPEC["optim"], "epochs": 1})
    prepared = prepare(spec)
    ds = prepared.dataset
    assert np.all(ds.a[ds.split == TRAIN] == 0), "the training attributes are masked"
    fit = ds.indices(DFR_TRAIN)
    assert np.array_equal(np.bincount(ds.y[fit] * 2 + ds.a[fit]), [63, 63, 63, 63]), "validation's are not"
    history = train_loop(spec, prepared)
    assert history[-1]["status"] == "ok" and len(history[-1]["val_groups"]) == 4


def test_refused_without_validation_attribute_labels():
    with pytest.raises(GerneError, match="dfr needs validation attribute labels"):
        load_spec({**SPEC, "data": {**SPEC["data"], "attributes": "unknown", "attribute_labels": "none"}})


# -- params and search -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"beta": 1.0}, {"C": 0}, {"C": -0.1}, {"num_retrains": 0}, {"seed": -1}])
def test_params_refuse_unknown_keys_and_out_of_bounds_values(bad):
    with pytest.raises(GerneError, match="method"):
        load_spec({**SPEC, "method": {"name": "dfr", **bad}})


def test_unknown_key_names_the_method():
    with pytest.raises(GerneError, match="dfr"):
        load_spec({**SPEC, "method": {"name": "dfr", "lambda_up": 3}})


def test_registered_and_searchable():
    assert methods.get("dfr") is DFR
    assert DFR.searchable() and "C" in DFR.search_params
    assert (DFR.needs_val_attributes, DFR.uses_groups, DFR.needs_train_attributes) == (True, False, False)


def test_suggest_draws_C_log_uniform_inside_the_authors_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(40):
        trial = study.ask()
        drawn.append(DFR.suggest(trial, None, None, DFR.Params())["C"])
        study.tell(trial, 0.0)
        assert trial.distributions["C"] == optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
    assert min(C_GRID) <= min(drawn) and max(drawn) <= max(C_GRID)
    assert np.median(drawn) < 0.3, "log-uniform: the median is near 0.1, not 0.5"
    assert DFR.suggest(optuna.trial.FixedTrial({"C": 0.07}), None, None, DFR.Params()) == {"C": 0.07}
    assert load_spec({**SPEC, "method": {"name": "dfr", "C": 0.07}}).method.C == 0.07
