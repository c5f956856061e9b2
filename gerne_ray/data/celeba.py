"""CelebA with one binary attribute as the class and another as the bias attribute.

Layout (`data.root` is the folder), as the official release or the Kaggle copy has it:

    root/list_attr_celeba.txt       line 1: the image count; line 2: the 40 attribute names;
                                    then `<image_id> <+1/-1 x 40>`, whitespace-separated
    root/list_eval_partition.txt    `<image_id> <0/1/2>` (train/val/test)
    root/img_align_celeba/<image_id>

Kaggle's variant is also read: list_attr_celeba.csv (header `image_id,<40 names>`, values 1/-1),
list_eval_partition.csv (header `image_id,partition`) and images in img_align_celeba/ or
img_align_celeba/img_align_celeba/. When both a .txt and a .csv exist the .txt is read.

y is the `data.target` attribute (default Blond_Hair) and a the `data.attribute` one (default Male):
+1 -> 1 and -1 (or 0) -> 0, so K = A = 2. Rows are in list_attr order; ids are the image numbers
(000001.jpg -> 1) when every image id is a number, else the row number. Images are read lazily
with the `imagenet224` transform (shorter side 256, centre crop 224, ImageNet normalisation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.images import ImageFiles
from gerne_ray.data.metadata_csv import int_labels, read_csv, require_root, split_codes
from gerne_ray.errors import GerneError

NAME = "celeba"
ATTRIBUTES = "list_attr_celeba"
PARTITION = "list_eval_partition"
IMAGES = "img_align_celeba"
DEFAULT_TARGET = "Blond_Hair"
DEFAULT_ATTRIBUTE = "Male"


def _find(folder: Path, stem: str) -> Path:
    """folder/stem.txt, else folder/stem.csv, or a GerneError naming both."""
    for suffix in (".txt", ".csv"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise GerneError(
        f"data.root: {folder} has neither {stem}.txt nor {stem}.csv; point data.root at the CelebA folder "
        f"holding {ATTRIBUTES}.txt, {PARTITION}.txt and {IMAGES}/"
    )


def _read_attr_txt(path: Path) -> pd.DataFrame:
    """list_attr_celeba.txt as strings: column image_id, then one column per attribute name."""
    with open(path, encoding="utf-8", errors="replace") as f:
        count_line, names_line = f.readline(), f.readline()
    names = names_line.split()
    try:
        count = int(count_line.strip())
    except ValueError:
        count = None
    if count is None or not names:
        raise GerneError(
            f"data.root: {path} must start with the image count, then a line of attribute names; "
            "this is not CelebA's list_attr_celeba.txt"
        )
    try:
        df = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names], dtype=str,
                         keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame(columns=["image_id", *names])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise GerneError(f"data.root: {path} is not readable as list_attr_celeba.txt ({err})") from None
    if len(df) != count:
        raise GerneError(
            f"data.root: {path} announces {count} images on its first line but lists {len(df)}; the file "
            "is truncated or edited: extract it again"
        )
    return df


def _read_partition(path: Path) -> pd.Series:
    """list_eval_partition (.txt or .csv) as a Series of split values indexed by image id."""
    if path.suffix == ".csv":
        df = read_csv(path, "it must have columns image_id, partition")
        if df.shape[1] < 2:
            raise GerneError(f"data.root: {path} must have two columns: image_id, partition")
        ids, values = df.iloc[:, 0], df["partition"] if "partition" in df.columns else df.iloc[:, 1]
    else:
        try:
            df = pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", "partition"], dtype=str,
                             keep_default_na=False, index_col=False)
        except pd.errors.EmptyDataError:
            df = pd.DataFrame(columns=["image_id", "partition"])
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
            raise GerneError(f"data.root: {path} is not readable as list_eval_partition.txt ({err})") \
                from None
        ids, values = df["image_id"], df["partition"]
    ids = ids.astype(str).str.strip()
    if ids.duplicated().any():
        raise GerneError(f"data.root: {path} lists {ids[ids.duplicated()].iloc[0]} twice; extract it again")
    return pd.Series(values.to_numpy(), index=ids.to_numpy())


def _column(df: pd.DataFrame, names: list[str], option: str, name: str, path: Path) -> np.ndarray:
    """The attribute column `name` as 0/1 (+1 -> 1, -1 or 0 -> 0), or a GerneError naming the option."""
    if name not in names:
        raise GerneError(
            f"{option}: {name!r} is not a CelebA attribute in {path.name}; use one of: {', '.join(names)}"
        )
    first_line = 3 if path.suffix == ".txt" else 2
    values = int_labels(df[name], name, path, first_line=first_line, non_negative=False)
    bad = ~np.isin(values, (-1, 0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GerneError(
            f"data.root: {path}: column {name!r} must hold +1/-1, but line {i + first_line} "
            f"({df['image_id'].iloc[i]}) has {values[i]}; this is not CelebA's attribute list"
        )
    return (values > 0).astype(np.int64)


def _image_folder(folder: Path) -> Path:
    """root/img_align_celeba, or the Kaggle copy's img_align_celeba/img_align_celeba."""
    images = folder / IMAGES
    if (images / IMAGES).is_dir():
        return images / IMAGES
    if not images.is_dir():
        raise GerneError(
            f"data.root: {images} is not a folder; extract {IMAGES}.zip into data.root ({folder})"
        )
    return images


def load_celeba(root: str | None, target: str | None = None, attribute: str | None = None) -> GroupedDataset:
    """Load CelebA: y = data.target (Blond_Hair), a = data.attribute (Male), imagenet224 images."""
    holds = f"the CelebA folder holding {ATTRIBUTES}.txt, {PARTITION}.txt and {IMAGES}/"
    folder = require_root(root, NAME, holds)
    target = DEFAULT_TARGET if target is None else target
    attribute = DEFAULT_ATTRIBUTE if attribute is None else attribute
    if target == attribute:
        raise GerneError(
            f"data.target and data.attribute both name {target!r}; the attribute must be another column "
            f"(defaults: {DEFAULT_TARGET}, {DEFAULT_ATTRIBUTE})"
        )
    attr_path = _find(folder, ATTRIBUTES)
    if attr_path.suffix == ".txt":
        df = _read_attr_txt(attr_path)
    else:
        df = read_csv(attr_path, "it must have a header image_id,<40 attribute names>")
        df = df.rename(columns={df.columns[0]: "image_id"})
    names = [c for c in df.columns if c != "image_id"]
    y = _column(df, names, "data.target", target, attr_path)
    a = _column(df, names, "data.attribute", attribute, attr_path)
    image_ids = df["image_id"].astype(str).str.strip()
    if len(image_ids) == 0:
        raise GerneError(f"data.root: {attr_path} lists no images; extract it again")
    if image_ids.duplicated().any():
        raise GerneError(f"data.root: {attr_path} lists {image_ids[image_ids.duplicated()].iloc[0]} twice")

    part_path = _find(folder, PARTITION)
    partition = _read_partition(part_path)
    absent = ~image_ids.isin(partition.index)
    if absent.any():
        raise GerneError(
            f"data.root: {part_path} has no row for {image_ids[absent].iloc[0]} ({int(absent.sum())} images "
            f"of {attr_path.name} are missing); use the two files of one CelebA release"
        )
    split = split_codes(partition.loc[image_ids.to_numpy()].reset_index(drop=True), "partition", part_path)

    stems = image_ids.str.rsplit(".", n=1).str[0]
    if stems.str.fullmatch(r"[0-9]{1,15}").all():
        ids = stems.astype(np.int64).to_numpy()
    else:
        ids = np.arange(len(image_ids), dtype=np.int64)
    images = _image_folder(folder)
    paths = [str(images / i) for i in image_ids]
    return GroupedDataset(
        name=NAME, inputs=ImageFiles(paths, transform="imagenet224"), y=y, a=a, split=split, ids=ids,
        num_classes=2, num_attributes=2,
    )
