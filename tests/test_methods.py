"""Methods as plug-ins: the registry, a method added by a test, exact resume and 2 Ray Train workers for
every registered method, and the modules that must name no method."""

import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import pytest
import torch
from pydantic import Field

from gerne_ray import methods
from gerne_ray.cli import main, method_table
from gerne_ray.errors import GerneError
from gerne_ray.loop import WorkerContext, load_state, train_loop
from gerne_ray.methods import Batch, Method, MethodParams
from gerne_ray.methods.base import SearchRange
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare, run_first_stages, train
from gerne_ray.tuning import optuna_space

SYNTH = {
    "name": "m",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "optim": {"lr": 0.05, "epochs": 2, "batch_size_per_class": 8, "steps_per_epoch": 4},
}
# hyperparameters that fit the synthetic data (GERNE's beta inside its bounds; JTT's stage 1 short)
PARAMS = {"gerne": {"c": 1.0, "beta": 0.5}, "reweight": {"c": 1.0, "beta": 0.5}, "jtt": {"T": 1, "T_max": 2}}


def method_spec(tmp_path, name: str, *overrides: str):
    raw = {**SYNTH, "name": f"m-{name}", "method": {"name": name, **PARAMS.get(name, {})},
           "storage": {"path": str(tmp_path)}}
    return load_spec(raw, list(overrides))


def prepared_for(spec):
    """What train() hands the loop: prepared data with the method's first stage run."""
    spec.folder.check_writable()
    return run_first_stages(spec, prepare(spec), spec.folder).for_spec(spec)


# -- a method defined here, registered with one line ---------------------------------------------------
class HalfParams(MethodParams):
    """ERM with the loss scaled by w."""

    name: Literal["half"] = "half"
    w: float = Field(0.5, gt=0, description="factor on the loss")


class Half(Method):
    """A toy method: w times the mean cross-entropy of a biased batch, w searched in [0.1, 1]."""

    name = "half"
    Params = HalfParams
    summary = "a toy: w times ERM's loss"
    search_params = {"w": SearchRange(0.1, 1.0)}  # the default suggest draws it, a spec may narrow it

    def losses(self, batch: Batch) -> dict:
        loss = torch.nn.functional.cross_entropy(self.models["model"](batch.x), batch.y)
        return {"loss": self.params.w * loss}


@pytest.fixture
def half():
    methods.register(Half)  # the one registry line a user's own method needs
    yield Half
    methods._loaded.pop("half", None)


def test_a_method_defined_in_a_test_registers_validates_trains_and_is_listed(half, tmp_path, capsys):
    spec = method_spec(tmp_path, "half", "method.w=0.8")
    assert type(spec.method) is HalfParams and spec.method.w == 0.8
    message = "method.v: unknown key of method half; remove it or use one of: name, w$"
    with pytest.raises(GerneError, match=message):
        method_spec(tmp_path, "half", "method.v=1")
    result = train(spec)
    assert result["status"] == "completed" and result["params"] == {"name": "half", "w": 0.8}
    listed = {m["name"]: m for m in method_table()}
    assert listed["half"]["params"] == [{"name": "w", "default": 0.5, "description": "factor on the loss"}]
    assert main(["methods"]) == 0
    assert "half: a toy: w times ERM's loss" in capsys.readouterr().out


def drawn(spec, n: int = 60) -> list[dict]:
    """n configurations of the spec's search space (tune's define-by-run function), random sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    stats = prepare(spec, check_method=False).stats
    out = []
    for _ in range(n):
        trial = study.ask()
        derived = optuna_space(trial, stats, spec.search, spec.method)  # what is not drawn
        out.append({**trial.params, **derived, "dist": trial.distributions})
        study.tell(trial, 0.0)
    return out


def test_a_spec_replaces_a_methods_search_range_for_the_search_and_compare(half, tmp_path, capsys):
    # the registered toy: its default range, then the spec's (the default suggest reads search_params)
    ws = [d["w"] for d in drawn(method_spec(tmp_path, "half"))]
    assert 0.1 <= min(ws) and max(ws) <= 1.0 and max(ws) - min(ws) > 0.6
    narrowed = drawn(method_spec(tmp_path, "half", "search.space.methods={half: {w: [0.2, 0.25]}}"))
    assert all(0.2 <= d["w"] <= 0.25 and d["dist"]["w"] == optuna.distributions.FloatDistribution(0.2, 0.25)
               for d in narrowed)
    with pytest.raises(GerneError, match=r"search\.space\.methods\.half\.w: 0 is not a value method\.w takes "
                                         r"\(input should be greater than 0\)"):
        method_spec(tmp_path, "half", "search.space.methods={half: {w: [0, 0.5]}}")
    # built-ins, log-uniform; the ranges of the other methods a compare run searches wait for their turn
    both = "search.space.methods={groupdro: {eta: [0.002, 0.004]}, jtt: {lambda_up: [3, 4]}}"
    etas = drawn(method_spec(tmp_path, "groupdro", both))
    assert all(0.002 <= d["eta"] <= 0.004 and d["dist"]["eta"].log for d in etas)
    assert set(etas[0]) == {"eta", "dist", "trial_number"}
    ups = drawn(method_spec(tmp_path, "jtt", both))
    assert all(3 <= d["lambda_up"] <= 4 and 1 <= d["T"] <= 2 for d in ups)
    assert {d["T"] for d in ups} == {1, 2}  # T keeps its own range, [1, T_max]
    assert all(0.001 <= d["eta"] <= 0.1 for d in drawn(method_spec(tmp_path, "groupdro")))  # the default
    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["groupdro"]["search"] == {
        "eta": "log-uniform in [0.001, 0.1] (search.space.methods.groupdro.eta)"}
    assert listed["half"]["search"] == {"w": "uniform in [0.1, 1] (search.space.methods.half.w)"}


def test_a_registered_name_cannot_be_taken_twice(half):
    class Other(Half):
        pass

    with pytest.raises(GerneError, match="registered already"):
        methods.register(Other)


def test_every_builtin_method_is_listed_with_its_hyperparameters(capsys):
    assert main(["methods", "--json"]) == 0
    table = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(methods.BUILTIN) <= set(table)
    for name, m in table.items():
        assert m["summary"], name
        params = {p["name"] for p in m["params"]}
        assert set(m["search"]) <= params, f"{name} searches only its own hyperparameters"
        assert set(methods.get(name).Params.model_fields) - {"name"} == params


def test_switching_the_method_by_override_drops_the_other_methods_keys():
    spec = load_spec({"name": "x", "method": {"name": "gerne", "c": 1.0, "beta": 0.5}}, ["method.name=erm"])
    assert spec.method.model_dump() == {"name": "erm"}
    spec = load_spec({"name": "x", "method": {"name": "gerne", "c": 1.0, "t": 0.2}}, ["method.name=resample"])
    assert spec.method.model_dump() == {"name": "resample", "t": 0.2}


@pytest.mark.parametrize("name", methods.names())
def test_every_method_resumes_exactly(tmp_path, name):
    """2 epochs, then resumed to 4 from the checkpoint, equal 4 epochs straight: losses, metrics, weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    spec4 = method_spec(tmp_path, name, "optim.epochs=4")
    prepared = prepared_for(spec4)
    h4 = train_loop(spec4, prepared, WorkerContext(checkpoint_dir=straight))
    train_loop(method_spec(tmp_path, name), prepared, WorkerContext(checkpoint_dir=resumed))
    h22 = train_loop(spec4, prepared, WorkerContext(checkpoint_dir=resumed))
    drop = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in h22] == \
        [{k: v for k, v in r.items() if k not in drop} for r in h4]
    a, b = load_state(straight / "checkpoint.pt"), load_state(resumed / "checkpoint.pt")
    for key in ("model", "aux_models", "method"):
        assert _flat(a[key]).keys() == _flat(b[key]).keys()
        for k, v in _flat(a[key]).items():
            w = _flat(b[key])[k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, f"{key}.{k}"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


MODULES_THAT_NAME_NO_METHOD = ("loop.py", "distributed.py", "tuning.py", "report.py", "compare.py",
                               "training.py", "results.py")


def test_the_loop_ray_train_tune_and_report_name_no_method():
    root = Path(methods.__file__).parent.parent
    for module in MODULES_THAT_NAME_NO_METHOD:
        text = (root / module).read_text()
        for name in methods.BUILTIN:
            for quoted in (f'"{name}"', f"'{name}'"):
                assert quoted not in text, f"{module} names the method {name}"


# -- every method on two real Ray Train workers ---------------------------------------------------------
def _all_methods_worker(config: dict) -> None:
    """Every method's loop on this worker (real DDP and collectives); rank 0 writes what each rank held."""
    import ray.train

    from gerne_ray.distributed import RayTrainContext
    from gerne_ray.spec import JobSpec

    class Collect(RayTrainContext):  # no Ray checkpoints: several runs share this worker group
        def load_checkpoint(self):
            return None

        def save(self, row, state):
            self.state = state

    out = {}
    for name, (raw, prepared) in config["runs"].items():
        ctx = Collect()
        history = train_loop(JobSpec.model_validate(raw), prepared, ctx)
        states = ctx.all_gather({k: ctx.state[k] for k in ("model", "aux_models", "method")})
        out[name] = {"history": [{k: v for k, v in r.items() if not k.endswith("_groups")} for r in history],
                     "states": states}
    if ctx.rank == 0:
        torch.save(out, config["out"])
    ray.train.report({"done": 1})


def test_every_method_runs_on_two_ray_train_workers_with_the_same_state_on_each(ray_cluster, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    runs = {}
    for name in methods.BUILTIN:
        spec = method_spec(tmp_path, name, "scaling.num_workers=2")
        runs[name] = (spec.model_dump(mode="json"), prepared_for(spec))
    out = tmp_path / "out.pt"
    TorchTrainer(_all_methods_worker, train_loop_config={"runs": runs, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="all-methods", storage_path=str(tmp_path))).fit()
    got = torch.load(out, weights_only=False)
    assert set(got) == set(methods.BUILTIN)
    for name, res in got.items():
        assert [r["epoch"] for r in res["history"]] == [1, 2], name
        assert all(np.isfinite(r["loss"]) and r["status"] == "ok" for r in res["history"]), name
        rank0, rank1 = (_flat(s) for s in res["states"])
        assert rank0.keys() == rank1.keys()
        for k, v in rank0.items():
            same = torch.equal(v, rank1[k]) if isinstance(v, torch.Tensor) else v == rank1[k]
            assert same, f"{name}: {k} differs between the two workers"
