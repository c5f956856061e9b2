"""The job spec's JSON Schema: `gerne-ray schema`, the committed gerne-ray.schema.json, the editors'
modeline in every jobs/ spec, and the spec format's `version`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from gerne_ray.demo import DEMO_SPEC
from gerne_ray.errors import GerneError
from gerne_ray.results import read_json, write_json
from gerne_ray.spec import SPEC_VERSIONS, json_schema, load_spec
from gerne_ray.training import claim_run_dir, train

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "gerne-ray.schema.json"
CLI = [str(Path(sys.executable).parent / "gerne-ray")]
REGENERATE = ".venv/bin/gerne-ray schema > gerne-ray.schema.json"
MODELINE = re.compile(r"# yaml-language-server: \$schema=(\S+)")
SPECS = sorted(ROOT.glob("jobs/**/*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_what_the_command_prints():
    proc = subprocess.run([*CLI, "schema"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "gerne-ray job spec" and proc.stdout.endswith("}\n")
    assert SCHEMA_FILE.is_file() and proc.stdout == SCHEMA_FILE.read_text(), (
        f"gerne-ray.schema.json is out of date with gerne_ray/spec.py; regenerate it: {REGENERATE}")
    assert json.dumps(json_schema(), indent=2) + "\n" == proc.stdout  # the same bytes in another process


def _properties(schema: dict):
    """(where, key, property schema, required) for every key of every object in the schema."""
    for where, node in [("(top level)", schema), *schema["$defs"].items()]:
        for key, prop in node.get("properties", {}).items():
            yield where, key, prop, key in node.get("required", [])


def test_every_key_has_a_description_and_every_optional_one_a_default(validator):
    keys = list(_properties(validator.schema))
    assert len(keys) > 60  # every section and every method's keys
    assert [(w, k) for w, k, p, _ in keys if not p.get("description")] == []
    assert [(w, k) for w, k, p, required in keys if not required and "default" not in p] == []
    top = validator.schema["properties"]
    assert top["version"]["default"] == 1 and top["method"]["default"]["name"] == "gerne"
    assert top["search"]["default"]["space"]["c"] == [0.5]  # a default_factory's value is shown too


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(ROOT / "jobs")) for p in SPECS])
def test_every_job_spec_has_the_modeline_and_the_schema_accepts_it(path, validator):
    first = path.read_text().splitlines()[0]
    match = MODELINE.fullmatch(first)
    assert match, f"{path.name}: start with `# yaml-language-server: $schema=<path>`, not {first!r}"
    assert not Path(match[1]).is_absolute() and (path.parent / match[1]).resolve() == SCHEMA_FILE
    raw = yaml.safe_load(path.read_text())
    assert [e.message for e in validator.iter_errors(raw)] == []
    assert raw.get("version") == 1, f"{path.name}: write `version: 1` (the spec format it is written for)"
    load_spec(path)


def test_jobs_holds_the_specs():
    assert len(SPECS) == 25 and {p.parent.name for p in SPECS} == {"jobs", "paper"}


ACCEPTED = [
    {"name": "x"},  # every section defaulted
    {"name": "x", "version": 1, "method": {}},  # a method section without a name is GERNE's
    {"name": "x", "method": {"c": 1.0, "beta": 0.5}},
    {"name": "x", "method": {"name": "jtt", "T": 2}},
    {"name": "x", "method": {"name": "erm"}},
    {"name": "x", "search": {"space": {"c": {"low": 0.25, "high": 0.5}, "lr": [0.001, 0.1]}}},
    {"name": "x", "data": {"dataset": "synthetic", "root": None}, "scaling": {"cpus_per_worker": 2}},
]
REFUSED = [
    {"seed": 1},  # no name
    {"name": "x", "version": 2},
    {"name": "x", "versoin": 1},
    {"name": "x", "method": {"name": "erm", "c": 0.5}},  # erm has no c
    {"name": "x", "method": {"name": "nope"}},
    {"name": "x", "method": {"cc": 0.5}},
    {"name": "x", "data": {"dataset": "imagenet"}},
    {"name": "x", "optim": {"epochs": 0}},
    {"name": "x", "model": {"arch": "vgg"}},
    {"name": "../up"},
]


@pytest.mark.parametrize("raw", ACCEPTED, ids=[json.dumps(r) for r in ACCEPTED])
def test_the_schema_accepts_what_the_spec_accepts(raw, validator):
    load_spec(raw)
    assert [e.message for e in validator.iter_errors(raw)] == []


@pytest.mark.parametrize("raw", REFUSED, ids=[json.dumps(r) for r in REFUSED])
def test_the_schema_refuses_what_the_spec_refuses(raw, validator):
    with pytest.raises(GerneError):
        load_spec(raw)
    assert not validator.is_valid(raw)


def test_a_spec_of_another_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "future.yaml"
    path.write_text(yaml.safe_dump({**DEMO_SPEC, "version": 2, "a_key_of_version_2": {"x": 1}}))
    proc = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("gerne-ray: error:") and str(path) in line
    assert "version: 2 is not a spec version this release reads (it reads: 1)" in line, line
    assert "upgrade gerne-ray" in line and "a_key_of_version_2" not in line  # the version, not its keys


@pytest.mark.parametrize("value", [0, "1", True, 1.5, None])
def test_version_must_be_one_this_release_reads(value):
    with pytest.raises(GerneError, match=r"version: .* is not a spec version this release reads"):
        load_spec({"name": "x", "version": value})


def test_a_spec_without_version_is_version_1():
    assert SPEC_VERSIONS == (1,)
    assert load_spec({"name": "x"}).version == 1 == load_spec({"name": "x", "version": 1}).version
    assert load_spec({"name": "x"}).model_dump(mode="json")["version"] == 1  # spec.json records it


def test_a_run_folder_written_before_version_existed_resumes(tmp_path):
    spec = load_spec(DEMO_SPEC, [f"storage.path={tmp_path}", "name=old", "optim.epochs=1"])
    first = train(spec)
    spec_json = tmp_path / "old" / "spec.json"
    assert read_json(spec_json)["version"] == 1
    old = read_json(spec_json)
    del old["version"]  # as an older release wrote it
    write_json(spec_json, old)
    epoch_1 = pq.read_table(tmp_path / "old" / "history.parquet").to_pylist()[0]
    resumed = train(load_spec(spec, ["optim.epochs=2"]))
    assert (first["epochs_run"], resumed["epochs_run"]) == (1, 2)
    history = pq.read_table(tmp_path / "old" / "history.parquet").to_pylist()
    assert history[0] == epoch_1  # epoch 1 came from the checkpoint (its timing too), not a restart
    assert read_json(spec_json)["version"] == 1
    old["seed"] = 7  # a different configuration under the same name is still refused
    write_json(spec_json, old)
    with pytest.raises(GerneError, match="differs in seed"):
        claim_run_dir(spec)
