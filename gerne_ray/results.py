"""Run results on disk, written atomically: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gerne_ray.metrics import METRIC_NAMES

TMP_SUFFIX = ".tmp"  # temporary files are `.<name>.<random>.tmp` beside the file they become
STALE_TMP_S = 3600  # a temporary file untouched this long was left by a killed writer: removed
_OLD_TMP = re.compile(r"[a-z0-9_]{8}")  # the random part of the tempfile.mkstemp names of older versions
PROBE_BYTES = 1 << 20  # after a writer's vague failure, what is written to learn the system's reason


def atomic_write(path: Path, write) -> None:
    """Write path via write(tmp) on a temporary file beside it, then an atomic rename.

    A reader sees the old file or the new one, never half of one. The new file is flushed to disk
    (fsync) before the rename and the rename after it; a write that fails leaves the old file as it
    was and removes its temporary file, and temporary files a killed writer left behind are removed
    by the next write of the same file after STALE_TMP_S. The file gets the mode a new file gets
    (0666 less the umask), as any other file the user writes. A failed write is an OSError naming
    path (ENOSPC for a full disk, EFBIG, EIO, ...) also where the writer reports it otherwise:
    torch.save raises a RuntimeError without the system's reason, which a probe write then finds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _new_temporary(path)
    done = False
    try:
        try:
            write(str(tmp))
        except RuntimeError as err:
            reason = _write_failure(tmp)
            if reason is None:
                raise  # the file system takes more data: the writer failed for a reason of its own
            raise OSError(reason.errno, reason.strerror or os.strerror(reason.errno), str(path)) from err
        _fsync(tmp)
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    _fsync(path.parent, directory=True)


def _new_temporary(path: Path) -> Path:
    """A new empty file `.<name>.<random>.tmp` beside path, created with mode 0666 less the umask."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a file's data, or a folder's entries (a rename), to disk; folders only where POSIX allows."""
    if directory and not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder cannot be opened to be flushed
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise  # some file systems cannot flush a folder: the rename is then as durable as they make it
    finally:
        os.close(fd)


def _write_failure(tmp: Path) -> OSError | None:
    """The OSError that writing PROBE_BYTES more to tmp meets (a full disk, the file size limit, an
    I/O error), or None when the file system takes them."""
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err if isinstance(err.errno, int) else None
    return None


def is_temporary(name: str, target: str) -> bool:
    """Whether file name is a temporary file of an atomic write of the file named target."""
    prefix = f".{target}."
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    return rest.endswith(TMP_SUFFIX) or bool(_OLD_TMP.fullmatch(rest))


def remove_stale_temporaries(path: Path, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Remove the temporary files of path's atomic writes untouched for older_than_s (killed writers).

    Younger ones may belong to a write in progress elsewhere and are left alone. Returns the removed.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not is_temporary(entry.name, path.name):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime >= older_than_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # removed meanwhile by another writer, or not ours to remove
    return removed


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, obj: dict) -> None:
    """Write obj as indented JSON (NaN and inf become null), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_rows_parquet(path: str | Path, rows: list[dict]) -> None:
    """Write a list of flat dicts as one Parquet table, atomically."""
    table = pa.Table.from_pylist(rows)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_json(path: str | Path) -> dict:
    """Read a JSON result file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# -- The keys of run results, declared once (read by training, tuning, compare, report and cli) -----
# Split codes as in gerne_ray.data.base (TRAIN 0, VAL 1, TEST 2): the splits evaluated after an epoch.
EVAL_SPLITS = {"val": 1, "test": 2}
METRIC_KEYS = tuple(f"{split}_{m}" for split in EVAL_SPLITS for m in METRIC_NAMES)
SHOWN_METRICS = ("val_gba", "val_wga", "test_gba", "test_wga")  # what the terminal prints after a run
# Configuration keys a search may set besides the method's own hyperparameters.
OPTIM_KEYS = ("lr", "weight_decay")
DERIVED_KEYS = ("lambda",)  # recorded with a configuration, never set on a spec
SEED_KEY = "seed"


def objective_key(metric: str) -> str:
    """The reported key holding the best value of `metric` so far (what Tune and Optuna maximise)."""
    return f"best_{metric}"


def metric_names(metric: str | Sequence[str]) -> list[str]:
    """search.metric as a list: one metric, or several (multi-objective; the first selects epochs)."""
    return [metric] if isinstance(metric, str) else list(metric)


def select_epoch(history: list[dict], metric: str | Sequence[str]) -> dict | None:
    """The completed epoch with the highest validation metric (of several, the first; earliest on ties),
    or None."""
    metric = metric_names(metric)[0]
    done = [r for r in history if r["status"] == "ok" and math.isfinite(r[metric])]
    return max(done, key=lambda r: (r[metric], -r["epoch"])) if done else None


def epoch_metrics(row: dict, history: list[dict], metric: str | Sequence[str]) -> dict:
    """The scalars reported for an epoch, plus `best_<m>` for each metric m: its value at the best epoch
    so far (selected by the first metric; 0 where none is finite).

    Optuna takes a trial's last report as its value and ASHA compares reports at its rungs: the
    running best makes both see the trial's selected epoch, and a diverged trial a finite worst value.
    With several metrics each objective is read at that one epoch: the trial's point on the Pareto plane.
    """
    best = select_epoch(history, metric)
    out = {k: v for k, v in row.items() if isinstance(v, int | float | str)}
    for m in metric_names(metric):
        value = best.get(m) if best else None
        out[objective_key(m)] = value if isinstance(value, int | float) and math.isfinite(value) else 0.0
    return out


def history_rows(history: list[dict]) -> list[dict]:
    """History rows with a fixed schema (missing keys padded with None) for Parquet."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    return [{k: r.get(k) for k in keys} for r in history]
