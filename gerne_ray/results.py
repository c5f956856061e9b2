"""Run results on disk, written atomically: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gerne_ray.metrics import METRIC_NAMES


def atomic_write(path: Path, write) -> None:
    """Write path via write(tmp) on a temporary file beside it, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def select_epoch(history: list[dict], metric: str) -> dict | None:
    """The completed epoch with the highest validation metric (earliest on ties), or None."""
    done = [r for r in history if r["status"] == "ok" and math.isfinite(r[metric])]
    return max(done, key=lambda r: (r[metric], -r["epoch"])) if done else None


def epoch_metrics(row: dict, history: list[dict], metric: str) -> dict:
    """The scalars reported for an epoch, plus the best finite value of `metric` so far (0 if none).

    Optuna takes a trial's last report as its value and ASHA compares reports at its rungs: the
    running best makes both see the trial's selected epoch, and a diverged trial a finite worst value.
    """
    best = select_epoch(history, metric)
    out = {k: v for k, v in row.items() if isinstance(v, int | float | str)}
    out[objective_key(metric)] = best[metric] if best else 0.0
    return out


def history_rows(history: list[dict]) -> list[dict]:
    """History rows with a fixed schema (missing keys padded with None) for Parquet."""
    keys = list(dict.fromkeys(k for r in history for k in r))
    return [{k: r.get(k) for k in keys} for r in history]
