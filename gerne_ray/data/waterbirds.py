"""Waterbirds as the group_DRO authors release it (waterbird_complete95_forest2water2).

Layout (`data.root` is the extracted folder):

    root/metadata.csv      columns img_id, img_filename, y, split, place, place_filename
    root/<img_filename>    e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg

y = 1 is a waterbird (0 a landbird); the attribute a is `place`, 1 for a water background (0 land);
split 0/1/2 is train/val/test; ids are img_id. K = A = 2. Train groups (y, place) of the release:
(0,0) 3498, (0,1) 184, (1,0) 56, (1,1) 1057; val and test are balanced in place within each class.
`place_filename` (the Places image the bird was pasted on) is not used. Images are read lazily with
the `imagenet224` transform (shorter side 256, centre crop 224, ImageNet normalisation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.images import ImageFiles
from gerne_ray.data.metadata_csv import (
    image_paths,
    int_labels,
    missing_columns,
    read_csv,
    require_root,
    split_codes,
    unique_ids,
)
from gerne_ray.errors import GerneError

NAME = "waterbirds"
METADATA = "metadata.csv"
COLUMNS = ("img_id", "img_filename", "y", "split", "place")
RELEASE = "waterbird_complete95_forest2water2"


def _binary(values: np.ndarray, column: str, path: Path) -> np.ndarray:
    """A 0/1 column, or a GerneError at the first other value."""
    bad = (values != 0) & (values != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GerneError(
            f"data.root: {path}: column {column!r} must be 0 or 1, but line {i + 2} has {values[i]}; "
            "this is not the group_DRO Waterbirds metadata"
        )
    return values


def load_waterbirds(root: str | None) -> GroupedDataset:
    """Load Waterbirds (group_DRO release): y = waterbird, a = place (1 water), imagenet224 images."""
    folder = require_root(root, NAME, f"the extracted {RELEASE} folder (it holds {METADATA})")
    path = folder / METADATA
    if not path.is_file():
        nested = sorted(p.parent for p in folder.glob(f"*/{METADATA}"))
        hint = f"; it is in {nested[0]}: point data.root there" if nested else (
            f"; point data.root at the extracted {RELEASE} folder"
        )
        raise GerneError(f"data.root: {path} does not exist{hint}")
    df = read_csv(path, f"point data.root at the extracted {RELEASE} folder")
    missing_columns(list(df.columns), COLUMNS, path, "the group_DRO Waterbirds metadata")
    y = _binary(int_labels(df["y"], "y", path, first_line=2), "y", path)
    a = _binary(int_labels(df["place"], "place", path, first_line=2), "place", path)
    split = split_codes(df["split"], "split", path, first_line=2)
    ids = unique_ids(df["img_id"], "img_id", path, first_line=2)
    if len(y) == 0:
        raise GerneError(f"data.root: {path} has no rows; the release lists 11788 images")
    paths = image_paths(folder, df["img_filename"].tolist(), "img_filename", path, first_line=2)
    return GroupedDataset(
        name=NAME, inputs=ImageFiles(paths, transform="imagenet224"), y=y, a=a, split=split, ids=ids,
        num_classes=2, num_attributes=2,
    )
