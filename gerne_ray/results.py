"""Run results on disk, written atomically: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
