"""JTT: the error set, the weighted draw, the cached first stage, search, resume and its gain over ERM."""

import logging
import math

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from gerne_ray import stage1
from gerne_ray.data.base import TRAIN
from gerne_ray.errors import GerneError
from gerne_ray.groups import GroupStats
from gerne_ray.loop import Prepared, WorkerContext, load_state, model_for, train_loop
from gerne_ray.methods.base import Batch
from gerne_ray.methods.jtt import JTT, JTTParams
from gerne_ray.sampling import PairedSampler
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, run_first_stages, train

SYNTH = {
    "name": "j",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "jtt", "T": 2, "lambda_up": 50.0},
    "optim": {"lr": 0.05, "epochs": 4, "batch_size_per_class": 16},
}


def _spec(tmp_path, *overrides):
    return load_spec({**SYNTH, "storage": {"path": str(tmp_path)}}, list(overrides))


class _Ctx:
    rank, world_size, device = 0, 1, torch.device("cpu")


def training_stats_of(y, a):
    return GroupStats.from_labels(np.asarray(y), np.asarray(a), 2, 2)


def _stats(n=6):
    y = np.arange(n) % 2
    return training_stats_of(y, y)


# -- params ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "field"), [
    ({"name": "jtt", "lambda": 3}, "unknown key of method jtt"),
    ({"name": "jtt", "T": 0}, "method.T"),
    ({"name": "jtt", "T": 1.5}, "method.T"),
    ({"name": "jtt", "lambda_up": 0.5}, "method.lambda_up"),
    ({"name": "jtt", "T_max": 0}, "method.T_max"),
    ({"name": "jtt", "T": 3, "T_max": 2}, "T_max"),
])
def test_params_are_checked(method, field):
    with pytest.raises(GerneError, match=field):
        load_spec({**SYNTH, "method": method})


def test_jtt_needs_no_attribute_labels():
    spec = load_spec({**SYNTH, "data": {"dataset": "synthetic", "attributes": "unknown",
                                        "attribute_labels": "none"}})
    assert spec.method.name == "jtt" and not JTT.uses_groups and not JTT.needs_train_attributes


# -- the error set and the draw --------------------------------------------------------------------
def test_error_set_is_the_row_of_epoch_t_and_weights_upsample_it():
    errors = np.array([[1, 0, 0, 1, 0, 0],
                       [0, 1, 0, 1, 0, 1],
                       [0, 0, 0, 0, 0, 0]], dtype=bool)
    m = JTT(JTTParams(T=2, lambda_up=3.0), _stats(), _Ctx(), errors)
    assert m.error_set.tolist() == [False, True, False, True, False, True]
    # the authors' upsampled set holds each error row 1 + lambda_up times: weight 4, others 1
    assert m.weights.tolist() == [1.0, 4.0, 1.0, 4.0, 1.0, 4.0]
    assert JTT(JTTParams(T=1, lambda_up=3.0), _stats(), _Ctx(), errors).weights.tolist() == [4, 1, 1, 4, 1, 1]
    assert JTT(JTTParams(T=3), _stats(), _Ctx(), errors).weights.tolist() == [1.0] * 6


def test_missing_stage_or_t_past_it_is_refused():
    with pytest.raises(GerneError, match="first stage"):
        JTT(JTTParams(), _stats(), _Ctx(), None)
    with pytest.raises(GerneError, match="method.T: 3"):
        JTT(JTTParams(T=3), _stats(), _Ctx(), np.zeros((2, 6), dtype=bool))


def test_an_error_set_holding_most_rows_warns_to_raise_t(caplog):
    # 2 of 6 rows (33%) is above the threshold, 1 of 6 (17%) below: only the first warns
    errors = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=bool)
    with caplog.at_level(logging.WARNING, logger="gerne_ray.methods.jtt"):
        JTT(JTTParams(T=2, T_max=2), _stats(), _Ctx(), errors)
        assert not caplog.records
        JTT(JTTParams(T=1, T_max=2), _stats(), _Ctx(), errors)
    assert len(caplog.records) == 1 and "33% of the training rows after epoch 1" in caplog.text
    assert "raise method.T" in caplog.text


def test_weighted_draw_matches_the_target_distribution():
    y = np.array([0, 1, 0, 1, 0, 1])
    w = np.array([1.0, 4.0, 1.0, 4.0, 0.0, 2.0])
    p = w / w.sum()  # 1/12, 4/12, 1/12, 4/12, 0, 2/12
    sampler = PairedSampler(y, y, 2, 2, batch_size_per_class=50, c=1.0, seed=3)
    draws = np.concatenate([sampler.weighted(w) for _ in range(400)])
    assert draws.shape == (400 * 100,)  # share x K rows per draw
    counts = np.bincount(draws, minlength=6)
    n = len(draws)
    assert counts[4] == 0, "a row of weight 0 is never drawn"
    for i in np.flatnonzero(p):  # each count within 5 binomial standard deviations
        assert abs(counts[i] - n * p[i]) < 5 * math.sqrt(n * p[i] * (1 - p[i])), (i, counts[i], n * p[i])
    keep = p > 0
    chi2 = (((counts[keep] - n * p[keep]) ** 2) / (n * p[keep])).sum()
    assert chi2 < 23.5  # chi-square with 4 degrees of freedom: P(X > 23.5) < 1e-4


def test_weighted_draw_is_seeded_rank_aware_and_resumable():
    y = np.arange(10) % 2
    w = np.linspace(1.0, 2.0, 10)
    r0 = PairedSampler(y, y, 2, 2, batch_size_per_class=5, c=1.0, seed=0, rank=0, world_size=2)
    r1 = PairedSampler(y, y, 2, 2, batch_size_per_class=5, c=1.0, seed=0, rank=1, world_size=2)
    a, b = r0.weighted(w), r1.weighted(w)
    assert len(a) == 3 * 2 and len(b) == 2 * 2  # rank shares of B = 5 over 2 workers, times K
    again = PairedSampler(y, y, 2, 2, batch_size_per_class=5, c=1.0, seed=0, rank=0, world_size=2)
    assert again.weighted(w).tolist() == a.tolist()
    state = r0.state_dict()
    nxt = r0.weighted(w)
    again.load_state_dict(state)
    assert again.weighted(w).tolist() == nxt.tolist()
    assert [r0.weighted(w)[:4].tolist() for _ in range(5)] != [r1.weighted(w).tolist() for _ in range(5)]
    for bad in (w[:-1], -w, np.full(10, np.nan), np.zeros(10)):
        with pytest.raises(GerneError, match="sampler weights"):
            r0.weighted(bad)


def test_draw_uses_the_weights_of_the_error_set():
    y = np.arange(8) % 2
    errors = np.array([[1, 0, 0, 0, 0, 0, 1, 0]], dtype=bool)
    m = JTT(JTTParams(T=1, lambda_up=5.0), training_stats_of(y, y), _Ctx(), errors)
    s1 = PairedSampler(y, y, 2, 2, batch_size_per_class=4, c=1.0, seed=1)
    s2 = PairedSampler(y, y, 2, 2, batch_size_per_class=4, c=1.0, seed=1)
    rows, n_biased = m.draw(s1)
    assert n_biased == 0
    assert rows.tolist() == s2.weighted(np.array([6.0, 1, 1, 1, 1, 1, 6, 1])).tolist()


def test_loss_is_the_mean_cross_entropy_by_hand():
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    # logits: [1, 0.5], [-1, 2], [1, 3]; CE = log(sum exp) - logit_y
    hand = [math.log(math.exp(1) + math.exp(0.5)) - 1, math.log(math.exp(-1) + math.exp(2)) + 1,
            math.log(math.exp(1) + math.exp(3)) - 3]
    m = JTT(JTTParams(T=1), training_stats_of([0, 1, 0], [0, 1, 0]), _Ctx(), np.zeros((1, 3), dtype=bool))
    m.models = {"model": model}
    loss = m.losses(Batch(x, y, y, np.arange(3), 0, 1.0))["loss"]
    assert loss.item() == pytest.approx(sum(hand) / 3, rel=1e-12)


# -- the first stage -------------------------------------------------------------------------------
REAL_TRAIN_LOOP = stage1.train_loop


class _Stop(Exception):
    pass


def _counting(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Count stage 1's train_loop calls (the epochs they train to); raise _Stop at epoch stop_at."""
    calls, real = [], REAL_TRAIN_LOOP

    def counted(spec, *args, **kwargs):
        if spec.optim.epochs == stop_at:
            raise _Stop
        calls.append(spec.optim.epochs)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(stage1, "train_loop", counted)
    return calls


def test_stage1_trains_once_resumes_and_is_shared_by_every_t(tmp_path, monkeypatch):
    spec = _spec(tmp_path, "method.T=1", "method.T_max=3", "optim.steps_per_epoch=4")
    prepared = prepare(spec)
    first = JTT.first_stage(spec)
    assert first.epochs == 3
    # killed during epoch 3: the rerun trains epoch 3 only
    _counting(monkeypatch, stop_at=3)
    with pytest.raises(_Stop):
        first.run(spec, prepared.dataset, spec.folder)
    calls = _counting(monkeypatch)
    errors = first.run(spec, prepared.dataset, spec.folder)
    assert calls == [3]
    n = len(prepared.dataset.indices(TRAIN))
    assert errors.shape == (3, n) and errors.dtype == bool and errors.any()
    folders = [p.name for p in (tmp_path / "j").iterdir() if p.name.startswith("stage1")]
    assert folders == [f"stage1-jtt-{stage1.jtt_key(spec, 3)}"]
    assert folders[0] != f"stage1-{stage1.stage1_key(spec)}"  # not the unknown-attribute biased model's
    assert stage1.jtt_key(spec, 3) != stage1.jtt_key(spec, 4)

    # the rows are the errors of ERM trained straight for e epochs, scored here by hand
    erm = load_spec(spec, ["method={name: erm}", "optim.epochs=3"])
    train_loop(erm, Prepared(prepared.dataset, prepared.stats), WorkerContext(checkpoint_dir=tmp_path))
    model = model_for(erm, prepared.dataset)
    model.load_state_dict(load_state(tmp_path / "checkpoint.pt")["model"])
    model.eval()
    idx = prepared.dataset.indices(TRAIN)
    with torch.no_grad():
        pred = model(prepared.dataset.inputs[idx]).argmax(1).numpy()
    assert (errors[2] == (pred != prepared.dataset.y[idx])).all()

    # a second call, and every trial of a search (other T, same T_max), reuse it: nothing trains
    again = first.run(spec, prepared.dataset, spec.folder)
    assert calls == [3] and (again == errors).all()
    for t in (1, 3):
        trial = load_spec(spec, [f"method.T={t}", "name=j"])
        shared = run_first_stages(trial, prepare(trial), trial.folder)
        assert calls == [3]
        m = JTT(trial.method, shared.stats, _Ctx(), shared.stage1)
        assert (m.error_set == errors[t - 1]).all()


def test_suggest_draws_inside_its_ranges(tmp_path, monkeypatch):
    spec = _spec(tmp_path, "method.T_max=7")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [JTT.suggest(study.ask(), None, spec.search, spec.method) for _ in range(60)]
    assert all(isinstance(d["T"], int) and 1 <= d["T"] <= 7 for d in drawn)
    assert all(2.0 <= d["lambda_up"] <= 100.0 for d in drawn)
    assert {d["T"] for d in drawn} == set(range(1, 8))
    fixed = optuna.trial.FixedTrial({"T": 7, "lambda_up": 5.0})
    assert JTT.suggest(fixed, None, spec.search, spec.method) == {"T": 7, "lambda_up": 5.0}
    assert JTT.searchable() and set(JTT.describe_search()) == {"T", "lambda_up"}


# -- training --------------------------------------------------------------------------------------
def test_resume_two_plus_two_equals_four(tmp_path):
    spec = _spec(tmp_path, "optim.steps_per_epoch=5", "method.T=1")
    prepared = prepare(spec)
    n = len(prepared.dataset.indices(TRAIN))
    errors = np.random.default_rng(0).random((1, n)) < 0.1
    p = Prepared(prepared.dataset, prepared.stats, stage1=errors)
    straight = train_loop(spec, p, WorkerContext(checkpoint_dir=tmp_path / "a"))
    train_loop(load_spec(spec, ["optim.epochs=2"]), p, WorkerContext(checkpoint_dir=tmp_path / "b"))
    resumed = train_loop(spec, p, WorkerContext(checkpoint_dir=tmp_path / "b"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a, b = load_state(tmp_path / "a" / "checkpoint.pt"), load_state(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["samplers"] == b["samplers"] and a["method"] == b["method"] and a["epoch"] == 4


def test_trains_end_to_end_and_beats_erm_on_the_worst_group(tmp_path):
    spec = _spec(tmp_path)
    result = train(spec)
    run = tmp_path / "j"
    history = pq.read_table(run / "history.parquet").to_pylist()
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in history)
    assert result["status"] == "completed" and result["test_avg"] > 0.6
    assert result["params"]["T"] == 2 and result["T"] == 2 and result["lambda_up"] == 50.0
    assert result["T_max"] == 2
    folder = run / f"stage1-jtt-{stage1.jtt_key(spec, 2)}"
    assert (folder / stage1.JTT_ERRORS_FILE).is_file() and (folder / "stage1.json").is_file()
    # seed 0 (seeds 0-3 measured: JTT 0.54-0.72 test WGA, ERM 0.30-0.37): upsampling the errors matters
    erm = train_loop(load_spec(spec, ["method={name: erm}"]), prepare(spec))
    erm_wga = max(erm, key=lambda r: r["val_gba"])["test_wga"]
    assert result["test_wga"] > erm_wga + 0.1, (result["test_wga"], erm_wga)


def test_trains_with_unknown_attributes(tmp_path):
    spec = _spec(tmp_path, "data.attributes=unknown", "data.attribute_labels=none", "optim.epochs=1",
                 "optim.steps_per_epoch=3", "method.T=1")
    result = train(spec)
    assert result["status"] == "completed" and result["T"] == 1
