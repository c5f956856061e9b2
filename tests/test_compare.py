"""gerne-ray compare: every method searched with the same budget on one Ray cluster, then tabulated."""

import pyarrow.parquet as pq
import pytest

from gerne_ray.cli import main
from gerne_ray.compare import compare, parse_methods
from gerne_ray.errors import GerneError
from gerne_ray.spec import load_spec

BASE = {
    "name": "cmp",
    "data": {"dataset": "synthetic", "conflict_ratio": 0.05},
    "method": {"name": "gerne", "c": 1.0, "beta": 0.5},
    "optim": {"lr": 0.05, "epochs": 2, "batch_size_per_class": 8, "steps_per_epoch": 3},
    "search": {"num_samples": 2, "scheduler": "fifo", "max_concurrent": 2, "final_seeds": 2,
               "space": {"c": [1.0]}},
}


def spec_in(tmp_path, **data):
    raw = {**BASE, "storage": {"path": str(tmp_path)}}
    if data:
        raw["data"] = {**BASE["data"], **data}
    return load_spec(raw)


def test_methods_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(GerneError, match="--methods: dro: use registered methods"):
        parse_methods("erm,dro")
    with pytest.raises(GerneError, match="names a method twice"):
        parse_methods("erm,erm")
    spec = spec_in(tmp_path, attributes="unknown", attribute_labels="none")
    with pytest.raises(GerneError, match=r"groupdro \(groupdro needs the training split's attribute labels.*"
                                         r"dfr \(dfr needs validation attribute labels"):
        compare(spec, "erm,groupdro,dfr")
    assert not (tmp_path / "cmp").exists()


def test_compare_searches_each_method_with_the_same_budget_and_resumes(ray_cluster, tmp_path, capsys):
    spec = spec_in(tmp_path)
    result = compare(spec, "erm,groupdro,gerne")
    run = tmp_path / "cmp"
    rows = pq.read_table(run / "compare.parquet").to_pylist()
    names = ("erm", "groupdro", "gerne")
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in names for s in (1, 2)]
    assert all(r["status"] == "completed" and 0 <= r["test_gba"] <= 1 for r in rows)
    trials = {m: pq.read_table(run / m / "trials.parquet").num_rows for m in ("erm", "groupdro", "gerne")}
    assert trials == {"erm": 1, "groupdro": 2, "gerne": 2}, "erm has nothing to search: one trial"
    assert {r["method"]: r["config"] for r in rows}["groupdro"].startswith('{"eta":')
    text = (run / "compare.md").read_text()
    for m in ("erm", "groupdro", "gerne"):
        assert f"| {m} | " in text
    assert (run / "plots" / "compare.png").stat().st_size > 1000
    summary = result.summary()
    assert summary["gerne"]["test_gba"][0] == pytest.approx(
        sum(r["test_gba"] for r in rows if r["method"] == "gerne") / 2)
    # a rerun resumes every finished search: the same rows, no new trial
    assert main(["compare", str(_write(spec, tmp_path)), "--methods", "erm,groupdro,gerne"]) == 0
    assert "test GBA" in capsys.readouterr().out
    assert pq.read_table(run / "compare.parquet").to_pylist() == rows
    assert {m: pq.read_table(run / m / "trials.parquet").num_rows for m in trials} == trials


def _write(spec, tmp_path):
    path = tmp_path / "cmp.json"
    path.write_text(spec.model_dump_json())
    return path
