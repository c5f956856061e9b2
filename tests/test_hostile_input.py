"""Hostile input: malformed specs, files and data fed to the gerne-ray command, in-process.

Every case writes its bad input under tmp_path next to an existing run folder `runs/victim/`
(spec.json, result.json, history.parquet, checkpoint.pt written directly, with old mtimes), then
runs `cli.main` and checks the README's promise: exit code 2, exactly one line on stderr,
`gerne-ray: error: ...`, naming the field or file and the fix, no traceback, and nothing written:
every file under tmp_path keeps its bytes and mtime and no file or folder appears.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gerne_ray.cli import main
from gerne_ray.spec import JobSpec

OLD = 1_600_000_000  # mtime given to every file present before a case runs
NON_NEGATIVE = ("greater than or equal to 0", "non-negative")  # pydantic's words, or the package's
DROP = object()  # in a patch: remove the key; in run_files: do not write the file

BASE = {
    "name": "victim",
    "seed": 0,
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp"},
    "method": {"name": "gerne", "c": 0.5, "beta": 1.0},
    "optim": {"epochs": 1, "batch_size_per_class": 16},
    "search": {"num_samples": 2, "max_concurrent": 1, "grace_period": 1},
    "storage": {"path": "{tmp}/runs"},
}

RUN_FILES = {
    "result.json": b'{"name": "victim", "status": "completed", "best_epoch": 1, "test_gba": 0.5}\n',
    "history.parquet": b"PAR1" + bytes(range(64)) + b"PAR1",
    "checkpoint.pt": b"an earlier run's checkpoint, not to be touched",
}


@dataclass(frozen=True)
class Case:
    """One hostile input: what to write, what to run, which words the error line must hold."""

    words: tuple  # substrings of the error line (a tuple: any one of them): the field or file, the fix
    argv: tuple[str, ...] = ("validate", "{spec}")
    patch: dict | None = None  # deep-merged into BASE and written as YAML
    text: bytes | None = None  # raw spec file content instead of a patch
    suffix: str = ".yaml"
    prior: str = "base"  # spec.json of the run folder: BASE's spec, or "same" as this case's
    run_files: dict = field(default_factory=dict)  # run-folder files replaced (bytes) or dropped
    extra_files: dict = field(default_factory=dict)  # other files under tmp_path
    ray: bool = False  # needs the shared local Ray cluster (conftest's ray_cluster)


def case(case_id: str, words: tuple | list, **kw):
    if kw.get("ray"):
        case_id = f"ray-{case_id}"  # starts the shared local Ray cluster: deselect with -k "not ray"
    return pytest.param(Case(tuple(words), **kw), id=case_id)


def spec_case(case_id: str, patch: dict, command: str, words, **kw):
    return case(case_id, words, argv=(command, "{spec}"), patch=patch, **kw)


CASES = [
    # --- the spec's keys and values -------------------------------------------------------------------
    spec_case("unknown-top-level-key", {"extra": 1}, "validate",
              ["extra: unknown key", "remove it or use one of: name, seed"]),
    spec_case("unknown-nested-key", {"method": {"cc": 0.5}}, "validate",
              ["method.cc: unknown key", "remove it or use one of: name, c, beta"]),
    spec_case("misspelled-section", {"methd": {"c": 0.5}}, "train",
              ["methd: unknown key", "remove it or use one of"]),
    spec_case("section-is-a-number", {"optim": 3}, "validate", ["optim", "valid dictionary"]),
    spec_case("epochs-is-a-string", {"optim": {"epochs": "ten"}}, "train",
              ["optim.epochs", "should be a valid integer", "'ten'"]),
    spec_case("epochs-is-a-fraction", {"optim": {"epochs": 2.5}}, "validate",
              ["optim.epochs", "should be a valid integer"]),
    spec_case("zero-epochs", {"optim": {"epochs": 0}}, "train", ["optim.epochs", "greater than 0"]),
    spec_case("negative-batch-size", {"optim": {"batch_size_per_class": -4}}, "train",
              ["optim.batch_size_per_class", "greater than 0"]),
    spec_case("zero-batch-size", {"optim": {"batch_size_per_class": 0}}, "bounds",
              ["optim.batch_size_per_class", "greater than 0"]),
    spec_case("c-zero", {"method": {"c": 0}}, "validate", ["method.c", "greater than 0"]),
    spec_case("c-above-one", {"method": {"c": 1.5}}, "bounds", ["method.c", "less than or equal to 1"]),
    spec_case("beta-above-bound-train", {"method": {"beta": 50}}, "train",
              ["method.beta = 50", "pick a method.beta inside the bounds"]),
    spec_case("beta-below-exact-lower-bound", {"method": {"beta": -50}}, "validate",
              ["method.beta = -50", "pick a method.beta inside the bounds"]),
    spec_case("beta-infinite", {"method": {"beta": float("inf")}}, "validate",
              ["method.beta", ("pick a method.beta inside the bounds", "finite number")]),
    spec_case("beta-nan", {"method": {"beta": float("nan")}}, "validate", ["method.beta", "number"]),
    spec_case("lr-infinite", {"optim": {"lr": float("inf")}}, "validate", ["optim.lr", "finite number"]),
    spec_case("unknown-dataset", {"data": {"dataset": "imagenet"}}, "train",
              ["data.dataset", "use one of: bffhq, celeba", "colored_digits", "waterbirds"]),
    spec_case("attribute-for-a-fixed-dataset", {"data": {"attribute": "Male"}}, "validate",
              ["data.attribute", "remove data.attribute"]),
    spec_case("unknown-arch", {"model": {"arch": "vgg"}}, "train", ["model.arch", "'mlp'"]),
    spec_case("image-arch-on-tabular-data", {"data": {"dataset": "synthetic"}, "model": {"arch": "cnn"}},
              "train", ["model.arch", "use arch: mlp"], prior="same"),
    spec_case("fresh-run-image-arch-on-tabular-data",
              {"name": "fresh", "data": {"dataset": "synthetic"}, "model": {"arch": "cnn"}},
              "train", ["model.arch", "use arch: mlp"]),
    spec_case("negative-data-seed", {"data": {"seed": -1}}, "validate",
              ["data.seed", NON_NEGATIVE]),
    spec_case("negative-seed", {"seed": -1}, "train", ["seed", NON_NEGATIVE]),
    spec_case("missing-data-root", {"data": {"root": "{tmp}/no-such-data"}}, "validate",
              ["data.root", "no-such-data", "remove data.root"]),
    spec_case("unknown-metric", {"search": {"metric": "val_foo"}}, "tune", ["search.metric", "'val_gba'"]),
    spec_case("unknown-scheduler", {"search": {"scheduler": "hyperband"}}, "tune",
              ["search.scheduler", "'asha'"]),
    spec_case("margin-one", {"search": {"margin": 1}}, "tune", ["search.margin", "less than 1"]),
    spec_case("lr-range-reversed", {"search": {"space": {"lr": [0.1, 0.001]}}}, "tune",
              ["search.space.lr", "write the range as [low, high]"]),
    spec_case("c-range-low-above-high", {"search": {"space": {"c": {"low": 0.9, "high": 0.2}}}}, "tune",
              ["search.space.c", "write the range with low <= high"]),
    spec_case("num-samples-zero", {"search": {"num_samples": 0}}, "tune",
              ["search.num_samples", "greater than 0"]),
    spec_case("tune-erm", {"method": {"name": "erm", "c": DROP, "beta": DROP}}, "tune",
              ["method.name", "erm has no hyperparameter of its own to search", "search.space.lr"]),
    spec_case("erm-with-gerne-keys", {"method": {"name": "erm"}}, "validate",
              ["method.c: unknown key of method erm", "remove it or use one of: name"]),
    spec_case("tune-with-only-empty-conflict-groups", {"data": {"dataset": "synthetic", "conflict_ratio": 0}},
              "tune", ["search", "gerne-ray train"]),
    spec_case("name-missing", {"name": DROP}, "validate", ["name: required", "add it to the spec"]),
    spec_case("name-with-slash", {"name": "../victim"}, "train", ["name", "should match pattern"]),
    spec_case("name-with-space", {"name": "my run"}, "validate", ["name", "should match pattern"]),
    spec_case("name-too-long", {"name": "a" * 200}, "validate", ["name", "should match pattern"]),
    spec_case("num-workers-above-batch-size", {"scaling": {"num_workers": 512}}, "train",
              ["scaling.num_workers", "lower scaling.num_workers"]),
    spec_case("num-workers-above-cluster-cpus",
              {"scaling": {"num_workers": 512}, "optim": {"batch_size_per_class": 512}}, "train",
              ["scaling.num_workers", "lower scaling.num_workers"], prior="same", ray=True),
    spec_case("storage-below-a-regular-file", {"storage": {"path": "{tmp}/a-file/runs"}}, "train",
              ["storage.path", "a-file", "choose a folder"], extra_files={"a-file": b"just a file\n"}),
    spec_case("run-folder-holds-another-configuration", {"method": {"beta": 0.5}}, "train",
              ["storage.path", "differs in method.beta", "give this job another name"]),
    spec_case("run-folder-spec-json-corrupt", {}, "train", ["spec.json", "another name"],
              run_files={"spec.json": b'{"name": "victim", "seed": '}),
    spec_case("run-folder-checkpoint-corrupt", {}, "train", ["checkpoint.pt", "delete it"], prior="same"),
    # --- the spec file itself ---------------------------------------------------------------------------
    case("not-yaml", ["{spec}", "not valid YAML/JSON at line", "fix the syntax"], text=b"name: [unclosed\n"),
    case("empty-file", ["{spec}", "empty", "write a job spec"], text=b""),
    case("comments-only", ["{spec}", "empty", "write a job spec"], text=b"# nothing here\n\n"),
    case("top-level-list", ["{spec}", "is a list, not a mapping of keys"], text=b"- name: x\n- seed: 1\n"),
    case("top-level-string", ["{spec}", "is a str, not a mapping of keys"], text=b"train me please\n",
         argv=("train", "{spec}")),
    case("huge-file", ["{spec}", "too large for a job spec", "limit"],
         text=b"name: victim\n" + b"# padding padding padding\n" * 45_000),
    case("not-utf8", ["{spec}", "not UTF-8", "save it as UTF-8"], text=b"name: v\xefctim\xff\xfe\n"),
    case("python-tag", ["{spec}", "not valid YAML/JSON", "fix the syntax"],
         text=b"name: !!python/object/apply:os.system ['touch pwned']\n"),
    case("deeply-nested", ["{spec}", "nested"], text=b"name: " + b"[" * 50_000 + b"\n"),
    case("json-syntax-error", ["{spec}", "not valid YAML/JSON", "fix the syntax"], text=b'{"name": }',
         suffix=".json"),
    case("spec-path-missing", ["{tmp}/nope.yaml", "no such file", "pass the path of a YAML job spec"],
         argv=("train", "{tmp}/nope.yaml")),
    case("spec-path-is-a-directory", ["{run}", "pass the path of a YAML job spec"], argv=("train", "{run}")),
    # --- command-line overrides -------------------------------------------------------------------------
    case("set-without-equals", ["method.beta", "write it as key.path=value"], patch={},
         argv=("validate", "{spec}", "--set", "method.beta")),
    case("set-into-a-value", ["seed.x=1", "seed is a value, not a section"], patch={},
         argv=("train", "{spec}", "--set", "seed.x=1")),
    case("set-value-not-yaml", ["method.beta=[", "not valid YAML"], patch={},
         argv=("validate", "{spec}", "--set", "method.beta=[")),
    case("set-unknown-key", ["method.bogus: unknown key", "remove it"], patch={},
         argv=("bounds", "{spec}", "--set", "method.bogus=1")),
    # --- run folders --------------------------------------------------------------------------------------
    case("resume-folder-without-spec-json", ["{run}", "no spec.json here", "pass the run folder"],
         argv=("resume", "{run}"), run_files={"spec.json": DROP}),
    case("resume-missing-folder", ["{tmp}/runs/nope", "no spec.json here", "pass the run folder"],
         argv=("resume", "{tmp}/runs/nope")),
    case("resume-corrupt-spec-json", ["{run}", "spec.json"], argv=("resume", "{run}"),
         run_files={"spec.json": b"\x00\x01 not json"}),
    case("resume-spec-json-not-a-mapping", ["{run}", "spec.json"], argv=("resume", "{run}"),
         run_files={"spec.json": b"[1, 2]\n"}),
    case("report-folder-without-tables", ["{run}", "trials.parquet", "pass the folder of a finished"],
         argv=("report", "{run}")),
    case("report-corrupt-tables", ["{run}", "trials.parquet"], argv=("report", "{run}"),
         run_files={"trials.parquet": b"not parquet", "trial_histories.parquet": b"PAR1 nor this",
                    "best.json": b'{"name": "victim"}\n'}),
]


def _fill(value, paths: dict[str, str]):
    """value with {tmp}, {run} and {spec} replaced, recursively."""
    if isinstance(value, str):
        for key, path in paths.items():
            value = value.replace("{" + key + "}", path)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, paths) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_fill(v, paths) for v in value)
    return value


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: bytes and mtime of files (a folder's own mtime is left out:
    `train` checks that it can write the run folder with a temporary file it removes at once)."""
    snap = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        snap[rel] = ("dir",) if path.is_dir() else (path.read_bytes(), path.lstat().st_mtime_ns)
    return snap


def _set_up(c: Case, tmp: Path) -> dict[str, str]:
    """Write the run folder, the extra files and the spec; return the placeholder paths."""
    run = tmp / "runs" / "victim"
    paths = {"tmp": str(tmp), "run": str(run), "spec": str(tmp / f"spec{c.suffix}")}
    raw = _fill(_merge(BASE, c.patch), paths) if c.patch is not None else None
    prior = raw if c.prior == "same" else _fill(BASE, paths)
    files = {"spec.json": (json.dumps(JobSpec.model_validate(prior).model_dump(mode="json"), indent=2)
                           + "\n").encode(), **RUN_FILES, **c.run_files}
    run.mkdir(parents=True)
    for name, content in files.items():
        if content is not DROP:
            (run / name).write_bytes(content)
    for name, content in c.extra_files.items():
        (tmp / name).write_bytes(content)
    if raw is not None:
        Path(paths["spec"]).write_text(yaml.safe_dump(raw, sort_keys=False))
    elif c.text is not None:
        Path(paths["spec"]).write_bytes(c.text)
    for path in [tmp, *tmp.rglob("*")]:
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    return paths


def _run(c: Case, tmp: Path, capsys, caplog) -> tuple[list[str], str]:
    """Run a case's command after its set-up; return what breaks the promise, and what was seen."""
    paths = _set_up(c, tmp)
    before = _snapshot(tmp)
    capsys.readouterr()
    caplog.set_level(logging.WARNING)
    caplog.clear()
    try:
        rc = main([_fill(a, paths) for a in c.argv])
    except SystemExit as exit_:
        rc = exit_.code
    except BaseException:  # an escaping exception is what the table reports
        rc = "raised"
        print(traceback.format_exc(), end="", file=sys.stderr)
    out, err = capsys.readouterr()
    after = _snapshot(tmp)
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    lines = err.splitlines()

    problems = []
    if "Traceback" in out + err + "".join(logged):
        problems.append(f"traceback ending {(lines or [''])[-1]!r}")
    if rc != 2:
        problems.append(f"exit code {rc!r}, not 2")
    if out or logged:
        problems.append(f"printed {out[-500:]!r} on stdout and logged {logged!r}")
    if len(lines) != 1 or not err.startswith("gerne-ray: error: "):
        problems.append(f"stderr is {len(lines)} lines, not one 'gerne-ray: error: ...'")
    for word in c.words:
        options = tuple(_fill(w, paths) for w in ((word,) if isinstance(word, str) else word))
        if not any(o in err for o in options):
            problems.append(f"the message lacks {' or '.join(map(repr, options))}")
    for what, names in (("created", set(after) - set(before)), ("removed", set(before) - set(after)),
                        ("changed", {p for p in before if p in after and before[p] != after[p]})):
        if names:
            problems.append(f"{what} {sorted(names)}")
    return problems, f"exit {rc!r}; stderr's last line: {lines[-1] if lines else ''!r}"


@pytest.mark.parametrize("c", CASES)
def test_hostile_input_is_one_line_and_writes_nothing(c: Case, tmp_path, monkeypatch, capsys, caplog,
                                                      request):
    if c.ray:
        request.getfixturevalue("ray_cluster")  # started before the snapshot and the capture
    (tmp_path / "cwd").mkdir()  # the command runs here: a relative path written by mistake shows up
    monkeypatch.chdir(tmp_path / "cwd")
    problems, seen = _run(c, tmp_path, capsys, caplog)
    assert not problems, "; ".join(problems) + f"\n{seen}"


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 30
    assert len({p.id for p in CASES}) == len(CASES)
