"""Bring-your-own image datasets in the SubpopBench layout: one metadata CSV beside the images.

Layout (`data.root` is the folder):

    root/metadata.csv    columns id, filename, split, y, a (others are ignored)
    root/<filename>      one image file per row (a path relative to root, or an absolute one inside it;
                         a path leaving root, by `..` or otherwise, is refused)

- id: a unique integer per row (the sample id reported in results).
- split: 0/1/2 (train/val/test), or the words train/val/test.
- y, a: integer class and attribute labels, 0 or more; K = max(y) + 1 and A = max(a) + 1 over all
  splits (labels must therefore be consecutive indices: a class missing from the training split is an
  error when training starts).

Every image file's header is read when the dataset is loaded (nothing is decoded): a file that is
no image, or claims more than PIL's 89.5 million pixel limit (a decompression bomb), is refused
there, naming the file.

Transform rule: the first row's image decides for the whole dataset. If neither side is larger than
`SMALL_IMAGE` (64) pixels the images are used as stored (`none`: uint8 CHW scaled to [0, 1]; every
image must then have the first one's size, as in the MNIST/CIFAR family); otherwise `imagenet224`
(shorter side to 256, centre crop 224, ImageNet normalisation), the transform of the SubpopBench
image benchmarks (Waterbirds, CelebA, MetaShift, ImageNetBG, NICO++, Living17), which takes
images of any size. Resize images yourself to choose the other one.

The label, split and id checks here are shared with the Parquet and Waterbirds loaders; every
error names the option (`data.root`), the file and the column, and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gerne_ray.data.base import SPLITS, GroupedDataset
from gerne_ray.data.images import ImageFiles, image_size
from gerne_ray.errors import GerneError

NAME = "metadata_csv"
METADATA = "metadata.csv"
COLUMNS = ("id", "filename", "split", "y", "a")
SMALL_IMAGE = 64  # images up to this size on both sides keep transform `none`
MAX_GROUPS = 1_000_000  # K x A beyond this is a labelling mistake, not a dataset

_SPLIT_WORDS = {**SPLITS, "valid": 1, "validation": 1}
_SPLIT_WORDS.update({f"{v}": v for v in SPLITS.values()})
_SPLIT_WORDS.update({f"{v}.0": v for v in SPLITS.values()})


def _where(i: int, first_line: int | None) -> str:
    """How an error names data row i: a line of a text file, or a 0-based row of a table."""
    return f"row {i}" if first_line is None else f"line {i + first_line}"


def _show(value: object) -> str:
    """A value as an error message quotes it: numpy scalars as plain numbers, text in quotes."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def require_root(root: str | None, dataset: str, holds: str) -> Path:
    """data.root as a Path, or a GerneError saying what the folder must hold."""
    if root is None or str(root) == "":
        raise GerneError(f"data.root: the {dataset} dataset reads files; set data.root to {holds}")
    return Path(root)


def int_labels(
    values: Sequence | np.ndarray | pd.Series, column: str, file: str | Path, *,
    first_line: int | None = None, non_negative: bool = True,
) -> np.ndarray:
    """A column of integer labels as int64, or a GerneError naming the file, column and first bad row.

    Accepts integers, integral floats (1.0) and their text forms, and booleans (True -> 1).
    """
    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_signed_integer_dtype(s) and not pd.api.types.is_extension_array_dtype(s):
        out = s.to_numpy(dtype=np.int64)
    else:
        out = _integers(s, column, file, first_line)
    if non_negative and len(out) and out.min() < 0:
        i = int(np.flatnonzero(out < 0)[0])
        raise GerneError(
            f"data.root: {file}: column {column!r} must hold labels 0 or more, but {_where(i, first_line)} "
            f"has {out[i]}; number the labels 0, 1, 2, ..."
        )
    return out


def _integers(s: pd.Series, column: str, file: str | Path, first_line: int | None) -> np.ndarray:
    """Any column (numbers, text) as int64, or a GerneError at the first value that is not an integer."""
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(num) & (num == np.floor(num))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise GerneError(
            f"data.root: {file}: column {column!r} must hold integers, but {_where(i, first_line)} has "
            f"{_show(s.iloc[i])}; fix that row (labels are integer indices 0, 1, 2, ...)"
        )
    if len(num) and (np.abs(num) >= 2**53).any():  # beyond exact float64 integers
        raise GerneError(f"data.root: {file}: column {column!r} has integers too large to be labels or ids")
    return num.astype(np.int64)


def split_codes(
    values: Sequence | np.ndarray | pd.Series, column: str, file: str | Path, *, first_line: int | None = None
) -> np.ndarray:
    """A split column as int8 codes 0/1/2: accepts 0/1/2 and the words train/val/test."""
    s = pd.Series(values)
    codes = s.astype(str).str.strip().str.lower().map(_SPLIT_WORDS)
    bad = codes.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GerneError(
            f"data.root: {file}: column {column!r} must be 0/1/2 (train/val/test), but "
            f"{_where(i, first_line)} has {_show(s.iloc[i])}; use 0 for train, 1 for val and 2 for test"
        )
    return codes.to_numpy(dtype=np.int8)


def unique_ids(
    values: Sequence | np.ndarray | pd.Series, column: str, file: str | Path, *, first_line: int | None = None
) -> np.ndarray:
    """An id column as int64, or a GerneError if an id is not an integer or appears twice."""
    ids = int_labels(values, column, file, first_line=first_line, non_negative=False)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) < len(ids):
        dup = uniq[counts > 1][0]
        raise GerneError(
            f"data.root: {file}: column {column!r} must be unique, but id {dup} appears "
            f"{counts[counts > 1][0]} times; give every row its own id"
        )
    return ids


def label_counts(y: np.ndarray, a: np.ndarray, file: str | Path, y_name: str, a_name: str) -> tuple[int, int]:
    """K = max(y) + 1 and A = max(a) + 1, or a GerneError if there are no rows or K x A is absurd."""
    if len(y) == 0:
        raise GerneError(f"data.root: {file} has no rows; it must list at least one sample per class")
    k, n_a = int(y.max()) + 1, int(a.max()) + 1
    if k * n_a > MAX_GROUPS:
        raise GerneError(
            f"data.root: {file}: columns {y_name!r} and {a_name!r} go up to {k - 1} and {n_a - 1}, which "
            f"makes {k} x {n_a} groups; number classes and attributes consecutively from 0"
        )
    return k, n_a


def missing_columns(present: Sequence[str], required: Sequence[str], file: str | Path, layout: str) -> None:
    """Raise GerneError naming the required columns the file lacks (and the ones it has)."""
    missing = [c for c in required if c not in present]
    if missing:
        raise GerneError(
            f"data.root: {file} has no column(s) {', '.join(missing)}; {layout} needs columns "
            f"{', '.join(required)} (it has: {', '.join(map(str, present)) or 'none'})"
        )


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV file as strings (nothing parsed yet, column names stripped), or a GerneError."""
    if not path.is_file():
        raise GerneError(f"data.root: {path} does not exist; {what}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise GerneError(f"data.root: {path} is empty; {what}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise GerneError(f"data.root: {path} is not a readable CSV file ({err}); {what}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def image_paths(folder: Path, names: Sequence, column: str, file: str | Path,
                first_line: int | None = None) -> list[str]:
    """Each file name joined to folder, or a GerneError at the first empty name or name leaving folder.

    A name may be absolute if it lies inside folder; no name may hold a `..` part (symbolic links
    inside folder are followed: whoever can write folder chose them).
    """
    base = os.path.abspath(folder)
    inside = tuple({r.rstrip(os.sep) + os.sep for r in (base, os.path.realpath(folder))})
    paths = []
    for i, name in enumerate(names):
        if name is None or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "":
            raise GerneError(
                f"data.root: {file}: column {column!r} is empty in {_where(i, first_line)}; every row needs "
                "the path of its image"
            )
        text = str(name).strip()
        target = os.path.normpath(os.path.join(base, text))  # an absolute text replaces base
        if ".." in Path(text).parts or not target.startswith(inside):
            raise GerneError(
                f"data.root: {file}: column {column!r} in {_where(i, first_line)} names {_show(text[:200])}, "
                f"which is not a file inside {folder}; give each image's path relative to that folder, "
                "without '..'"
            )
        paths.append(str(folder / text))
    return paths


def image_transform(first: str, small: int = SMALL_IMAGE) -> str:
    """`none` when the first image is at most `small` pixels on both sides, else `imagenet224`."""
    if not Path(first).is_file():
        return "none"  # ImageFiles then reports every missing file at once
    width, height = image_size(first)
    return "none" if max(width, height) <= small else "imagenet224"


def image_source(paths: list[str], where: str = "data.root") -> ImageFiles:
    """ImageFiles over paths with the transform the first image's size implies (see the module doc),
    every file's header checked."""
    transform = image_transform(paths[0]) if paths else "none"
    return ImageFiles(paths, transform=transform, where=where, check_headers=True)


def load_metadata_csv(root: str | None) -> GroupedDataset:
    """Load images listed in root/metadata.csv (SubpopBench layout: id, filename, split, y, a)."""
    folder = require_root(root, NAME, f"the folder holding {METADATA} (columns {', '.join(COLUMNS)})")
    path = folder / METADATA
    layout = f"the {NAME} layout"
    df = read_csv(path, f"the {NAME} dataset needs {METADATA} in data.root with columns {', '.join(COLUMNS)}")
    missing_columns(list(df.columns), COLUMNS, path, layout)
    y = int_labels(df["y"], "y", path, first_line=2)
    a = int_labels(df["a"], "a", path, first_line=2)
    split = split_codes(df["split"], "split", path, first_line=2)
    ids = unique_ids(df["id"], "id", path, first_line=2)
    k, n_a = label_counts(y, a, path, "y", "a")
    paths = image_paths(folder, df["filename"].tolist(), "filename", path, first_line=2)
    return GroupedDataset(
        name=NAME, inputs=image_source(paths), y=y, a=a, split=split, ids=ids, num_classes=k,
        num_attributes=n_a,
    )
