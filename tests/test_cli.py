"""The gerne-ray command as a user runs it: validate, bounds, train, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gerne_ray.cli import main
from gerne_ray.demo import DEMO_SPEC

JOBS = Path(__file__).resolve().parent.parent / "jobs"
CLI = [str(Path(sys.executable).parent / "gerne-ray")]  # the console script pip installed


def _write(tmp_path, raw: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_accepts_the_example_jobs(capsys):
    paths = [str(p) for p in sorted(JOBS.glob("*.yaml"))]
    assert main(["validate", *paths]) == 0
    assert capsys.readouterr().out.count(": ok") == len(paths)


def test_bounds_json_matches_the_formulas(capsys):
    assert main(["bounds", str(JOBS / "demo.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["c"] == 0.5
    assert {"y", "a", "count", "alpha"} <= set(report["groups"][0])
    # recompute beta_max from the printed group table alone, with A_y non-empty groups per class
    by_class: dict[int, list[dict]] = {}
    for g in report["groups"]:
        by_class.setdefault(g["y"], []).append(g)
    candidates = []
    for rows in by_class.values():
        a_y = sum(r["count"] > 0 for r in rows)
        total = sum(r["count"] for r in rows)
        for r in rows:
            alpha = r["count"] / total
            assert r["alpha"] == pytest.approx(alpha)
            if alpha > 1 / a_y:
                candidates.append(alpha / (report["c"] * (alpha - 1 / a_y)) - 1)
    assert report["beta_min"] == -1
    assert report["beta_max"] == pytest.approx(min(candidates))
    assert report["exact_lower"] <= -1 and report["exact_upper"] == pytest.approx(report["beta_max"])
    assert len(report["empty_groups"]) == sum(g["count"] == 0 for g in report["groups"]) > 0


def test_bounds_text_warns_about_empty_groups(capsys):
    assert main(["bounds", str(JOBS / "demo.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "simplified bounds" in out and "exact bounds" in out
    assert "empty training groups" in err


def test_train_command_end_to_end(tmp_path):
    spec = _write(tmp_path, {**DEMO_SPEC, "storage": {"path": str(tmp_path / "runs")}})
    proc = subprocess.run([*CLI, "train", str(spec), "--set", "optim.epochs=2", "--set", "name=cli"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test_gba" in proc.stdout
    run = tmp_path / "runs" / "cli"
    result = json.loads((run / "result.json").read_text())
    assert result["config"]["optim"]["epochs"] == 2 and (run / "history.parquet").is_file()


BAD_SPECS = [
    ({"name": "x", "method": {"c": 2}}, "method.c"),
    ({"name": "x", "data": {"dataset": "nope"}}, "data.dataset"),
    ({"name": "x", "model": {"arch": "vgg"}}, "model.arch"),
    ({"name": "x", "optim": {"lr": "fast"}}, "optim.lr"),
    ({"name": "x", "extra": 1}, "extra"),
    ({"name": "x", "method": {"name": "gerne", "c": 0.5, "beta": 40.0}}, "method.beta"),
    ({"name": "x", "data": {"dataset": "synthetic"}, "model": {"arch": "cnn"}}, "model.arch"),
]


@pytest.mark.parametrize(("raw", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_bad_specs_exit_nonzero_with_one_line(tmp_path, capsys, raw, field):
    path = _write(tmp_path, {**raw, "storage": {"path": str(tmp_path / "runs")}})
    command = "train" if raw.get("model", {}).get("arch") == "cnn" else "validate"
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gerne-ray: error:") and "\n" not in err
    assert field in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_a_real_process_prints_no_traceback(tmp_path):
    path = _write(tmp_path, {"name": "x", "method": {"c": 0, "beta": 0.0}})
    proc = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "method.c" in proc.stderr
