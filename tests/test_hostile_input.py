"""Hostile input: malformed specs, files and data fed to the gerne-ray command, in-process.

Every case writes its bad input under tmp_path next to an existing run folder `runs/victim/`
(spec.json, result.json, history.parquet, checkpoint.pt written directly, with old mtimes), then
runs `cli.main` and checks the README's promise: exit code 2, exactly one line on stderr,
`gerne-ray: error: ...`, naming the field or file and the fix, no traceback, and nothing written:
every file under tmp_path keeps its bytes and mtime and no file or folder appears.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gerne_ray import results
from gerne_ray.cli import main
from gerne_ray.spec import MAX_SPEC_BYTES, JobSpec

OLD = 1_600_000_000  # mtime given to every file present before a case runs
MAX_LINE = 2_000  # characters of an error line: a reader reads it, a terminal shows it whole
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
    extra_files: dict = field(default_factory=dict)  # other files under tmp_path (folders made as needed)
    fifos: tuple[str, ...] = ()  # named pipes made under tmp_path
    ray: bool = False  # needs the shared local Ray cluster (conftest's ray_cluster)


def case(case_id: str, words: tuple | list, **kw):
    if kw.get("ray"):
        case_id = f"ray-{case_id}"  # starts the shared local Ray cluster: deselect with -k "not ray"
    return pytest.param(Case(tuple(words), **kw), id=case_id)


def spec_case(case_id: str, patch: dict, command: str, words, **kw):
    return case(case_id, words, argv=(command, "{spec}"), patch=patch, **kw)


def _png(width: int, height: int, pixels: bool = True) -> bytes:
    """A PNG file of a black RGB image, or (pixels=False) only a header that claims width x height."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = zlib.compress(b"".join(b"\x00" + bytes(3 * width) for _ in range(height))) if pixels else b""
    return b"\x89PNG\r\n\x1a\n" + header + (chunk(b"IDAT", rows) if pixels else b"") + chunk(b"IEND", b"")


def csv_dataset(line_4: str, file: tuple[str, bytes] | None = None) -> dict:
    """A metadata_csv dataset under {tmp}/imgs whose line 4 names `line_4` (lines 2-3 and 5-9 are fine),
    plus one more file under imgs/ (name, bytes)."""
    rows = [(0, 0, 0), (0, 1, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 0, 0), (2, 1, 1)]
    files = {f"imgs/{i}.png": _png(8, 8) for i in range(len(rows))}
    lines = ["id,filename,split,y,a"] + [
        f"{i},{line_4 if i == 2 else f'{i}.png'},{split},{y},{a}" for i, (split, y, a) in enumerate(rows)]
    files["imgs/metadata.csv"] = ("\n".join(lines) + "\n").encode()
    if file is not None:
        files[f"imgs/{file[0]}"] = file[1]
    return files


def csv_case(case_id: str, words, line_4: str, file: tuple[str, bytes] | None = None):
    data = {"dataset": "metadata_csv", "root": "{tmp}/imgs", "conflict_ratio": DROP}
    return spec_case(case_id, {"data": data}, "validate", words, extra_files=csv_dataset(line_4, file))


def too_large(field: str, value: int, command: str = "validate"):
    """A case: `field` (dotted) set to `value`, beyond its upper limit."""
    *parents, leaf = field.split(".")
    patch: dict = {leaf: value}
    for part in reversed(parents):
        patch = {part: patch}
    return spec_case(f"{field}-{value:.0e}", patch, command, [field, "less than or equal to"])


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
    case("spec-path-is-a-directory", ["{run}", "is a directory", "pass the path of a YAML job spec"],
         argv=("train", "{run}")),
    # --- command-line overrides -------------------------------------------------------------------------
    case("set-without-equals", ["method.beta", "write it as key.path=value"], patch={},
         argv=("validate", "{spec}", "--set", "method.beta")),
    case("set-into-a-value", ["seed.x=1", "seed is a value, not a section"], patch={},
         argv=("train", "{spec}", "--set", "seed.x=1")),
    case("set-value-not-yaml", ["method.beta=[", "not valid YAML"], patch={},
         argv=("validate", "{spec}", "--set", "method.beta=[")),
    case("set-unknown-key", ["method.bogus: unknown key", "remove it"], patch={},
         argv=("bounds", "{spec}", "--set", "method.bogus=1")),
    case("set-value-repeats-a-key", ["--set 'data={seed: 1, seed: 2}'", "the key 'seed' appears twice"],
         patch={}, argv=("validate", "{spec}", "--set", "data={seed: 1, seed: 2}")),
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
    # --- sizes beyond their upper limits: refused by validation, before Optuna, numpy or an allocator --
    spec_case("seed-2**70", {"seed": 2**70}, "tune", ["seed", "less than or equal to 4294967295"]),
    spec_case("seed-2**32", {"seed": 2**32}, "train", ["seed", "less than or equal to 4294967295"]),
    spec_case("final-seeds-pass-the-seed-limit", {"seed": 2**32 - 2, "search": {"final_seeds": 3}}, "tune",
              ["seed: 4294967294 plus search.final_seeds 3", "use a seed of at most 4294967292"]),
    spec_case("hidden-a-million", {"model": {"hidden": 1_000_000}}, "train",
              ["model.hidden", "less than or equal to 16384"]),
    too_large("data.seed", 2**40),
    too_large("data.num_workers", 100_000, "train"),
    too_large("data.max_length", 10**9),
    too_large("optim.epochs", 10**12, "train"),
    too_large("optim.steps_per_epoch", 10**9, "train"),
    too_large("optim.batch_size_per_class", 10**9, "train"),
    too_large("optim.eval_batch_size", 10**9),
    too_large("search.num_samples", 10**9, "tune"),
    too_large("search.final_seeds", 10**6, "tune"),
    too_large("search.grace_period", 10**9, "tune"),
    # --- many problems, huge values: a short line, at once -------------------------------------------
    spec_case("twenty-thousand-unknown-keys", {f"k{i}": i for i in range(20_000)}, "validate",
              ["k0: unknown key", "and 19995 more problems"]),
    spec_case("half-a-megabyte-value", {"optim": {"epochs": "x" * 500_000}}, "train",
              ["optim.epochs", "should be a valid integer", "xxx..."]),
    # --- keys given twice -------------------------------------------------------------------------------
    case("duplicate-key-yaml", ["{spec}", "the key 'seed' appears twice", "lines 2 and 3", "keep one"],
         text=b"name: victim\nseed: 0\nseed: 1\n"),
    case("duplicate-nested-key-yaml-flow", ["{spec}", "the key 'dataset' appears twice", "(line 2)"],
         text=b"name: victim\ndata: {dataset: synthetic, dataset: colored_digits}\n",
         argv=("train", "{spec}")),
    case("duplicate-key-json", ["{spec}", "the key 'seed' appears twice", "keep one"],
         text=b'{"name": "victim", "seed": 0, "data": {}, "seed": 1}', suffix=".json"),
    # --- what the spec path is ----------------------------------------------------------------------------
    case("spec-is-dev-zero", ["/dev/zero", "is a character device, not a regular file", "pass the path"],
         argv=("validate", "/dev/zero")),
    case("spec-is-a-fifo", ["{tmp}/pipe.yaml", "is a FIFO", "not a regular file"], fifos=("pipe.yaml",),
         argv=("train", "{tmp}/pipe.yaml")),
    case("spec-below-a-regular-file", ["{tmp}/a-file/spec.yaml", "no such file"],
         extra_files={"a-file": b"just a file\n"}, argv=("validate", "{tmp}/a-file/spec.yaml")),
    # --- the rows of a metadata CSV and the files they name -------------------------------------------
    csv_case("csv-row-climbs-out-of-the-root", ["metadata.csv", "column 'filename' in line 4",
             "'../../../../etc/passwd'", "not a file inside", "without '..'"], "../../../../etc/passwd"),
    csv_case("csv-row-absolute-outside-the-root", ["metadata.csv", "line 4", "'/etc/passwd'",
             "not a file inside"], "/etc/passwd"),
    csv_case("csv-row-is-the-root-itself", ["metadata.csv", "line 4", "not a file inside"], "."),
    csv_case("csv-decompression-bomb", ["{tmp}/imgs/bomb.png", "too large to decode safely", "resize it"],
             "bomb.png", ("bomb.png", _png(20_000, 20_000, pixels=False))),
    csv_case("csv-later-file-is-not-an-image", ["{tmp}/imgs/notes.png", "not a readable image",
             "replace or remove it"], "notes.png", ("notes.png", b"dear diary\n")),
    csv_case("csv-later-image-of-another-size", ["{tmp}/imgs/big.png", "16x16", "must all have one size"],
             "big.png", ("big.png", _png(16, 16))),
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
        if path.is_dir():
            snap[rel] = ("dir",)
        elif not path.is_file():  # a named pipe: reading it would wait for a writer
            snap[rel] = ("special", path.lstat().st_mtime_ns)
        else:
            snap[rel] = (path.read_bytes(), path.lstat().st_mtime_ns)
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
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    for name in c.fifos:
        os.mkfifo(tmp / name)
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
    if len(err) > MAX_LINE:
        problems.append(f"the error line is {len(err)} characters, more than {MAX_LINE}")
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


# --- hostile input the table cannot hold: a /proc file, memory, a full disk, bounds at infinity --------


def _check(c: Case, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    """Run one case as the table does and assert the promise."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    problems, seen = _run(c, tmp_path, capsys, caplog)
    assert not problems, "; ".join(problems) + f"\n{seen}"


def _proc_file_beyond_the_spec_limit() -> str | None:
    """A /proc file that reports size 0 but holds more than MAX_SPEC_BYTES, if this system has one."""
    for name in ("/proc/kallsyms", "/proc/self/smaps"):
        try:
            with open(name, "rb") as f:
                holds = len(f.read(MAX_SPEC_BYTES + 1))
            if holds > MAX_SPEC_BYTES >= os.stat(name).st_size:
                return name
        except OSError:
            continue
    return None


def test_a_proc_file_beyond_the_limit_is_refused_by_the_bytes_read(tmp_path, monkeypatch, capsys, caplog):
    name = _proc_file_beyond_the_spec_limit()
    if name is None:
        pytest.skip("no /proc file here understates a size beyond the spec limit")
    _check(Case((name, "too large for a job spec", "limit"), argv=("validate", name)), tmp_path, monkeypatch,
           capsys, caplog)


def test_a_json_spec_with_a_byte_order_mark_is_read(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_fill(BASE, {"tmp": str(tmp_path)})).encode())
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert f"{path}: ok (victim" in capsys.readouterr().out


def test_bounds_keep_the_sign_of_infinite_ends_in_text_and_json(tmp_path, capsys):
    """Every training sample bias-conflicting: one group per class, so nothing bounds beta."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "inf", "data": {"dataset": "synthetic",
                                                            "conflict_ratio": 0.9999}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["bounds", str(spec)]) == 0
        text = capsys.readouterr().out
        assert main(["bounds", str(spec), "--json"]) == 0
        out = capsys.readouterr().out
    assert "simplified bounds: beta in [-1.0000, inf]" in text and "beta in [-inf, inf]" in text
    report = json.loads(out)  # standard JSON: no bare Infinity, NaN or null for a bound
    assert [report[k] for k in ("beta_min", "beta_max", "exact_lower", "exact_upper", "lambda_max")] == [
        -1.0, "Infinity", "-Infinity", "Infinity", "Infinity"]
    assert float(report["exact_lower"]) == -math.inf and float(report["exact_upper"]) == math.inf


def test_bounds_for_a_tiny_c_are_infinite_without_numpy_warnings(tmp_path, capsys):
    """beta = lambda / c - 1 overflows for c = 1e-320: the ends are then -inf and inf, silently."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "method": {"name": "gerne", "c": 1e-320}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "overflow encountered" would raise here
        assert main(["bounds", str(spec), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (report["exact_lower"], report["exact_upper"], report["beta_max"]) == ("-Infinity", "Infinity",
                                                                                  "Infinity")
    assert "Warning" not in err


# Run the CLI with as little address space left as a 1 GB tensor cannot fit in (imports done first).
_LITTLE_MEMORY = r"""
import resource, sys
import numpy, sklearn.datasets, torch
from gerne_ray.cli import main
with open("/proc/self/status") as f:
    used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + (768 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="sizes the limit from Linux's /proc")
def test_a_model_beyond_the_machines_memory_is_one_line_naming_model_hidden(tmp_path):
    spec = tmp_path / "spec.yaml"  # the widest mlp allowed: its two 16384 x 16384 layers are 1 GB each
    raw = _fill(_merge(BASE, {"model": {"hidden": 16_384}}), {"tmp": str(tmp_path)})
    spec.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-c", _LITTLE_MEMORY, "train", str(spec)], capture_output=True,
                       text=True, timeout=600)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("gerne-ray: error: model.hidden: ran out of memory"), lines[0]
    assert "lower model.hidden (now 16384)" in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before a run folder exists


GERNE_RAY = Path(sys.executable).parent / "gerne-ray"  # the console script pip installed


def _training_spec(tmp_path: Path, storage: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    raw = _merge(_fill(BASE, {"tmp": str(tmp_path)}), {"storage": {"path": str(storage)}})
    spec.write_text(yaml.safe_dump(raw))
    return spec


def _the_error_line(stderr: str) -> str:
    """The one `gerne-ray: error:` line, which ends stderr (progress lines may come before it)."""
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("gerne-ray: error: ")]
    assert "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


def test_a_file_size_limit_met_while_training_is_one_line_exit_1_and_no_temporary_file(tmp_path, capsys):
    """A real failed write (EFBIG) inside torch.save: reported with its path and the system's reason."""
    spec = _training_spec(tmp_path, tmp_path / "runs")
    run = tmp_path / "runs" / "victim"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    capsys.readouterr()
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, hard))  # spec.json fits, the first checkpoint not
    try:  # Python ignores SIGXFSZ: a write beyond the limit fails with EFBIG
        rc = main(["train", str(spec)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert rc == 1, err[-3000:]
    line = _the_error_line(err)
    assert f"{run / 'checkpoint.pt'}: File too large (EFBIG)" in line, line
    assert sorted(p.name for p in run.iterdir()) == ["spec.json"]  # no half checkpoint, no temporary file
    JobSpec.model_validate(json.loads((run / "spec.json").read_text()))


def test_a_disk_that_fills_while_training_is_one_line_exit_1_and_leaves_no_temporary_file(tmp_path):
    """A real full disk: a 64 KiB tmpfs, mounted in a user and mount namespace of the test's own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    mount = 'mount -t tmpfs -o size=64k tmpfs "$1"'
    if shutil.which("unshare") is None or subprocess.run([*namespace, mount, "sh", str(disk)],
                                                         capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (no unprivileged user and mount namespaces)")
    spec = _training_spec(tmp_path, disk / "runs")
    script = f'{mount} || exit 97; "$2" train "$3"; rc=$?; ls -A "$1/runs/victim" > "$4"; exit $rc'
    args = [str(disk), str(GERNE_RAY), str(spec), str(tmp_path / "left")]
    r = subprocess.run([*namespace, script, "sh", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _the_error_line(r.stderr)
    assert f"{disk / 'runs' / 'victim' / 'checkpoint.pt'}: No space left on device (ENOSPC)" in line, line
    assert "free space there" in line
    assert (tmp_path / "left").read_text().split() == ["spec.json"]  # no half checkpoint, no temporary file


def _dot_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_write_failing_midway_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    results.write_json(path, {"epoch": 1})
    before = path.read_bytes()

    def disk_full(tmp: str) -> None:  # the writer callable is ours: it meets a full disk half-way
        with open(tmp, "wb") as f:
            f.write(b'{"epoch": 2, "test_gba": 0.')
            f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    with pytest.raises(OSError) as caught:
        results.atomic_write(path, disk_full)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and _dot_files(tmp_path) == []

    def interrupted(tmp: str) -> None:  # Ctrl-C half-way: the same
        Path(tmp).write_bytes(b"{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        results.atomic_write(path, interrupted)
    assert path.read_bytes() == before and _dot_files(tmp_path) == []


def test_a_writer_failing_for_its_own_reason_is_not_taken_for_a_full_disk(tmp_path):
    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"x")
        raise RuntimeError("the writer's own bug")

    with pytest.raises(RuntimeError, match="the writer's own bug"):
        results.atomic_write(tmp_path / "table.bin", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        results.write_json(tmp_path / "result.json", {"a": 1})
        results.write_rows_parquet(tmp_path / "history.parquet", [{"a": 1}])
    finally:
        os.umask(old)
    for name in ("result.json", "history.parquet"):
        assert oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) == oct(0o666 & ~umask), name


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    path = tmp_path / "result.json"
    stale = [tmp_path / ".result.json.0123456789ab.tmp", tmp_path / ".result.json.k2j3h4g5"]  # ours, mkstemp
    in_progress = tmp_path / ".result.json.ba9876543210.tmp"  # a write going on elsewhere: left alone
    another = tmp_path / ".history.parquet.0123456789ab.tmp"  # another file's: left to its own writes
    for p in [*stale, in_progress, another]:
        p.write_bytes(b"half")
    for p in [*stale, another]:
        os.utime(p, (time.time() - 2 * results.STALE_TMP_S,) * 2)
    results.write_json(path, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, in_progress.name, another.name])
    assert results.read_json(path) == {"a": 1}
