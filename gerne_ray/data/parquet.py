"""Bring-your-own datasets as one Parquet table: labels, splits and either features or image paths.

`data.root` is the folder holding `manifest.parquet` (a path to a Parquet file itself is also taken
by `load_parquet`). One row per sample; columns:

- y, a: integer (or boolean) class and attribute labels, 0 or more; K = max(y) + 1, A = max(a) + 1.
  `data.target` / `data.attribute` name other columns to use as y / a instead (then the columns y / a
  need not exist): a table may carry several attribute columns and pick one per run. Other columns
  are ignored.
- split: 0/1/2 (train/val/test), or the words train/val/test.
- id (optional): a unique integer per row; without it, the row number.
- The inputs, exactly one of:
  - `path` (or `filename`): image file paths inside the manifest's folder (relative to it, or absolute
    but inside it; no `..`: put the manifest at the images' root), read lazily with the rule of the
    metadata_csv layout: images at most 64 pixels on both sides as stored, larger ones with the
    `imagenet224` transform (decided by the first row);
  - `features`: a list<float> column (every row the same length D) -> a float32 tensor (N, D);
  - numeric columns `x0, x1, ..., x{D-1}` (numbered from 0 without gaps, ordered by number, so
    x10 follows x9) -> a float32 tensor (N, D).
  Features are held in memory and must be finite; train them with `model.arch: mlp`.

Nulls are errors in every column the loader uses. Every error names the option (`data.root`,
`data.target` or `data.attribute`), the file and the column, and how to fix it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.metadata_csv import (
    image_paths,
    image_source,
    int_labels,
    label_counts,
    require_root,
    split_codes,
    unique_ids,
)
from gerne_ray.errors import GerneError

NAME = "parquet"
MANIFEST = "manifest.parquet"
PATH_COLUMNS = ("path", "filename")
FEATURES = "features"
_NUMBERED = re.compile(r"x(0|[1-9][0-9]*)")
INPUTS_HELP = (
    "give the inputs as one of: a 'path' (or 'filename') column of image files, a list<float> column "
    "'features', or numeric columns x0, x1, ..."
)


def manifest_path(root: str | None) -> Path:
    """The Parquet file data.root names: root itself, or root/manifest.parquet for a folder."""
    path = require_root(root, NAME, f"a folder holding {MANIFEST} (or a Parquet file)")
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.is_file():
            others = sorted(p.name for p in path.glob("*.parquet"))[:5]
            hint = f" (it holds {', '.join(others)}: rename the table to {MANIFEST})" if others else ""
            raise GerneError(
                f"data.root: {path} has no {MANIFEST}{hint}; the parquet dataset reads the table "
                f"data.root/{MANIFEST}"
            )
        return manifest
    if not path.is_file():
        raise GerneError(
            f"data.root: {path} does not exist; point data.root at the folder holding {MANIFEST}"
        )
    return path


def _read(path: Path):
    """The Parquet table at path (pyarrow), or a GerneError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise GerneError(
            f"data.root: {path} is not a readable Parquet file ({err}); write it with pandas "
            "DataFrame.to_parquet or pyarrow.parquet.write_table"
        ) from None


def _no_nulls(table, column: str, path: Path) -> None:
    """Raise GerneError naming the first row where column is null."""
    import pyarrow.compute as pc

    col = table.column(column)
    if col.null_count:
        i = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
        raise GerneError(f"data.root: {path}: column {column!r} is null in row {i}; every row needs a value")


def _label_column(table, option: str, name: str | None, default: str, path: Path) -> tuple[str, np.ndarray]:
    """The column used as y or a (the option's choice or the default) as int64 labels."""
    column = default if name is None else name
    if column not in table.column_names:
        if name is None:
            raise GerneError(
                f"data.root: {path} has no column {column!r}; add it, or name the column to use with "
                f"{option} (columns: {', '.join(table.column_names)})"
            )
        raise GerneError(
            f"{option}: {path} has no column {name!r}; use one of: {', '.join(table.column_names)}"
        )
    _no_nulls(table, column, path)
    return column, int_labels(table.column(column).to_pandas(), column, path)


def _finite(x: np.ndarray, what: str, path: Path) -> torch.Tensor:
    """Features as a float32 tensor, or a GerneError at the first row holding NaN or infinity."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float32)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise GerneError(
            f"data.root: {path}: {what} has a NaN or infinite value (or one beyond float32) in row "
            f"{int(np.flatnonzero(bad)[0])}; clean or drop that row"
        )
    return torch.from_numpy(np.ascontiguousarray(x))


def _list_features(table, path: Path) -> torch.Tensor:
    """The list<float> column `features` as a float32 tensor (N, D)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(FEATURES)
    kind = col.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise GerneError(
            f"data.root: {path}: column {FEATURES!r} has type {kind}, not a list of numbers; store each "
            "row's features as a list<float>, or use columns x0, x1, ..."
        )
    value = kind.value_type
    if not (pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value)):
        raise GerneError(f"data.root: {path}: column {FEATURES!r} holds {value}, not numbers; store floats")
    _no_nulls(table, FEATURES, path)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.flatnonzero(lengths != lengths[0])[0])
        raise GerneError(
            f"data.root: {path}: column {FEATURES!r} has {lengths[0]} values in row 0 but {lengths[i]} "
            f"in row {i}; every row needs the same number of features"
        )
    if len(lengths) and lengths[0] == 0:
        raise GerneError(
            f"data.root: {path}: column {FEATURES!r} holds empty lists; give each row its features"
        )
    flat = pc.list_flatten(col)
    if flat.null_count:
        raise GerneError(
            f"data.root: {path}: column {FEATURES!r} has null values inside its lists; fill them"
        )
    x = flat.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(table), -1)
    return _finite(x, f"column {FEATURES!r}", path)


def _numbered_features(table, names: list[str], path: Path) -> torch.Tensor:
    """The numeric columns x0, x1, ... as a float32 tensor (N, D)."""
    import pyarrow as pa

    numbers = sorted(int(n[1:]) for n in names)
    if numbers != list(range(len(numbers))):
        gap = next(i for i, n in enumerate(numbers) if n != i)
        raise GerneError(
            f"data.root: {path}: feature columns must be x0, x1, ... without gaps, but x{gap} is missing; "
            "rename the columns"
        )
    ordered = [f"x{i}" for i in numbers]
    for name in ordered:
        kind = table.column(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise GerneError(f"data.root: {path}: feature column {name!r} has type {kind}; store numbers")
        _no_nulls(table, name, path)
    x = np.column_stack([table.column(n).to_numpy().astype(np.float64) for n in ordered])
    return _finite(x, "the columns x0, x1, ...", path)


def load_parquet(root: str | None, target: str | None = None, attribute: str | None = None) -> GroupedDataset:
    """Load a Parquet manifest: y, a (or data.target / data.attribute), split, id, and features or paths."""
    path = manifest_path(root)
    table = _read(path)
    columns = table.column_names
    y_name, y = _label_column(table, "data.target", target, "y", path)
    a_name, a = _label_column(table, "data.attribute", attribute, "a", path)
    if "split" not in columns:
        raise GerneError(
            f"data.root: {path} has no column 'split'; add one with 0/1/2 (train/val/test) per row "
            f"(columns: {', '.join(columns)})"
        )
    _no_nulls(table, "split", path)
    split = split_codes(table.column("split").to_pandas(), "split", path)
    if "id" in columns:
        _no_nulls(table, "id", path)
        ids = unique_ids(table.column("id").to_pandas(), "id", path)
    else:
        ids = np.arange(len(table), dtype=np.int64)
    k, n_a = label_counts(y, a, path, y_name, a_name)

    numbered = [c for c in columns if _NUMBERED.fullmatch(c)]
    kinds = [c for c in PATH_COLUMNS if c in columns] + [FEATURES] * (FEATURES in columns)
    kinds += ["x0, x1, ..."] * bool(numbered)
    if len(kinds) != 1:
        found = f"it has {' and '.join(repr(k) for k in kinds)}" if kinds else "it has none of them"
        raise GerneError(f"data.root: {path}: {INPUTS_HELP} ({found}); keep exactly one")
    if kinds[0] in PATH_COLUMNS:
        _no_nulls(table, kinds[0], path)
        paths = image_paths(path.parent, table.column(kinds[0]).to_pylist(), kinds[0], path)
        inputs = image_source(paths)
    elif kinds[0] == FEATURES:
        inputs = _list_features(table, path)
    else:
        inputs = _numbered_features(table, numbered, path)
    return GroupedDataset(
        name=NAME, inputs=inputs, y=y, a=a, split=split, ids=ids, num_classes=k, num_attributes=n_a,
    )
