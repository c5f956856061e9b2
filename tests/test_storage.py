"""storage.path: local folders and pyarrow file system URIs (file:// works offline), and the
multi-node rule (a local folder is refused when workers may run on other nodes)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gerne_ray import cli
from gerne_ray.errors import GerneError
from gerne_ray.spec import load_spec
from gerne_ray.storage import RunFolder
from gerne_ray.training import train
from gerne_ray.tuning import tune

SMALL = {
    "name": "stored",
    "data": {"dataset": "colored_digits"},
    "model": {"arch": "mlp", "hidden": 16},
    "method": {"name": "gerne", "c": 0.5, "beta": 0.5},
    "optim": {"epochs": 2, "batch_size_per_class": 16},
    "search": {"num_samples": 2, "max_concurrent": 1, "scheduler": "fifo"},
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GERNE_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_local_folder_is_refused_when_workers_spread_over_nodes():
    multi = {**SMALL, "scaling": {"num_workers": 2, "placement_strategy": "SPREAD"}}
    with pytest.raises(GerneError, match=r"^spec: storage.path: 'runs' is a local folder.*other nodes.*s3://"):
        load_spec(multi)
    assert load_spec({**multi, "storage": {"path": "s3://bucket/runs"}}).scaling.multi_node
    assert load_spec({**multi, "storage": {"path": "/nfs/runs", "shared": True}}).storage.shared
    # one worker, or packed workers, may stay on one node: a local folder is fine
    load_spec({**SMALL, "scaling": {"num_workers": 1, "placement_strategy": "STRICT_SPREAD"}})
    load_spec({**SMALL, "scaling": {"num_workers": 2, "placement_strategy": "PACK"}})


def test_run_folder_locations(tmp_path, cache):
    local = RunFolder(str(tmp_path / "runs"), "a")
    assert not local.remote and local.location == str(tmp_path / "runs" / "a")
    assert local.local == tmp_path / "runs" / "a"
    uri = f"file://{tmp_path}/shared"
    remote = RunFolder(uri, "a")
    assert remote.remote and remote.location == f"{uri}/a" and remote.ray_storage == uri
    assert remote.local.is_relative_to(cache)
    again = RunFolder.at(f"{uri}/a/")
    assert (again.storage, again.name, again.location) == (uri, "a", remote.location)
    assert RunFolder.at(tmp_path / "runs" / "a").location == local.location


def test_push_and_pull_round_trip(tmp_path, cache):
    folder = RunFolder(f"file://{tmp_path}/shared", "r")
    folder.check_writable()
    (folder.local / "plots").mkdir(parents=True)
    (folder.local / "best.json").write_text('{"x": 1}')
    (folder.local / "plots" / "a.png").write_bytes(b"png")
    folder.push("best.json", "plots", "absent.json")
    assert (tmp_path / "shared/r/best.json").read_text() == '{"x": 1}'
    assert (tmp_path / "shared/r/plots/a.png").read_bytes() == b"png"
    (folder.local / "best.json").unlink()
    folder.pull("best.json", "plots", "absent.json")
    assert (folder.local / "best.json").read_text() == '{"x": 1}'
    assert not (folder.local / "absent.json").exists()


def test_unusable_storage_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(GerneError, match="storage.path: cannot write the run folder"):
        RunFolder(str(blocker / "runs"), "x").check_writable()
    with pytest.raises(GerneError, match="storage.path: 'nope://x' is not a file system URI"):
        RunFolder("nope://x", "x")
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**SMALL, "storage": {"path": str(blocker / "runs")}}))
    assert cli.main(["train", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "storage.path: cannot write" in err and "Traceback" not in err


def test_train_to_a_uri_writes_there_and_resumes_from_there(tmp_path, cache):
    uri = f"file://{tmp_path}/shared"
    first = train({**SMALL, "storage": {"path": uri}})
    remote = tmp_path / "shared" / "stored"
    written = {p.name for p in remote.iterdir()}
    assert {"spec.json", "checkpoint.pt", "history.parquet", "result.json"} <= written
    assert json.loads((remote / "result.json").read_text())["test_gba"] == first["test_gba"]
    times = list(pd.read_parquet(remote / "history.parquet").epoch_time_s)
    # another machine: an empty cache; more epochs continue from the stored checkpoint
    shutil.rmtree(cache)
    second = train({**SMALL, "storage": {"path": uri}, "optim": {**SMALL["optim"], "epochs": 3}})
    history = pd.read_parquet(remote / "history.parquet")
    assert list(history.epoch) == [1, 2, 3] and second["epochs_run"] == 3
    assert list(history.epoch_time_s[:2]) == times  # epochs 1 and 2 came from the checkpoint, not retrained


def test_tune_to_a_uri(ray_cluster, tmp_path, cache):
    uri = f"file://{tmp_path}/shared"
    result = tune({**SMALL, "name": "searched", "storage": {"path": uri}})
    remote = tmp_path / "shared" / "searched"
    for name in ("trials.parquet", "trial_histories.parquet", "best.json", "report.md", "optuna.journal",
                 "spec.json", "plots/metric_vs_beta.png"):
        assert (remote / name).is_file(), name
    assert result.location == f"{uri}/searched"
    assert len(pd.read_parquet(remote / "trials.parquet")) == 2
    assert list(remote.glob("experiment_state-*.json"))  # Tune's own state went to the URI as well
    # the report renders again from the URI alone
    (remote / "report.md").unlink()
    assert cli.main(["report", f"{uri}/searched"]) == 0
    assert (remote / "report.md").is_file()
    assert Path(result.run_dir).is_relative_to(cache)


def test_a_run_folder_of_an_older_version_still_resumes(tmp_path):
    from gerne_ray.training import claim_run_dir

    spec = load_spec({**SMALL, "storage": {"path": str(tmp_path)}})
    older = spec.model_dump(mode="json")
    del older["scaling"]["placement_strategy"], older["storage"]["shared"]  # keys added later, defaults
    (tmp_path / "stored").mkdir()
    (tmp_path / "stored" / "spec.json").write_text(json.dumps(older))
    claim_run_dir(spec)  # the same configuration: accepted
    other = load_spec(spec, ["scaling.placement_strategy=STRICT_PACK"])
    with pytest.raises(GerneError, match="differs in scaling.placement_strategy"):
        claim_run_dir(other)


def test_stage1_of_unknown_attributes_is_stored_at_the_uri_and_reused_from_there(tmp_path, cache):
    spec = {**SMALL, "name": "unknown", "storage": {"path": f"file://{tmp_path}/shared"},
            "data": {"dataset": "colored_digits", "attributes": "unknown", "attribute_labels": "val_only"},
            "method": {"name": "gerne", "c": 0.5, "beta": 0.5, "t": 0.05}, "search": {"metric": "val_gba"}}
    train(spec)
    stage1 = next((tmp_path / "shared" / "unknown").glob("stage1-*"))
    ranking = stage1 / "ranking.parquet"
    assert ranking.is_file()
    stamp = ranking.stat().st_mtime_ns
    shutil.rmtree(cache)  # another machine: nothing local; more epochs, the same stage 1
    train({**spec, "optim": {**SMALL["optim"], "epochs": 3}})
    assert ranking.stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "shared" / "unknown").glob("stage1-*"))) == 1
