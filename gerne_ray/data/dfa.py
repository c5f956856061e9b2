"""DFA-style image folders: the layout later papers use for Colored MNIST, Corrupted CIFAR-10 and bFFHQ.

Layout under the dataset folder (`data.root`, or its subfolder `cmnist`, `cifar10c` or `bffhq`, see
`find_dfa_root`):

    <pct>pct/align/<class>/<anything>_<y>_<a>.png     training, bias-aligned
    <pct>pct/conflict/<class>/<anything>_<y>_<a>.png  training, bias-conflicting
    valid/...                                          validation (see below)
    test/...                                           test

`<pct>` is the conflict ratio in percent: data.conflict_ratio 0.005 -> `0.5pct`, 0.01 -> `1pct`,
0.02 -> `2pct`, 0.05 -> `5pct` (any ratio whose folder exists works; others are an error listing
the folders there are).

Where valid/ lives differs between releases: DFA's Colored MNIST and Corrupted CIFAR-10 put it
inside the pct folder (`<pct>pct/valid`, one per ratio), its bFFHQ puts it beside (`valid`, shared
by every ratio). Both are read: `<pct>pct/valid` when it exists, else `valid`. test/ likewise
(`<pct>pct/test`, else `test`; every known release has it beside).

Inside each folder the images are found recursively, so flat folders (`valid/*.png`, as in DFA's
Colored MNIST and bFFHQ) and per-class subfolders (`valid/<class>/*.png`) both work; the class
and attribute come from the file name alone (the last two `_`-separated numbers before the
suffix), never from the folder. Suffixes `.png`, `.jpg` and `.jpeg` (any case) count as images;
other files and hidden files (names starting with `.`, e.g. macOS `._` resource forks) are
skipped. Rows are ordered train, val, test, each sorted by path; ids are the row index. Images
are read lazily (`ImageFiles`); their size is taken from the first training image.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.data.colored_digits import check_conflict_ratio
from gerne_ray.data.images import ImageFiles
from gerne_ray.errors import GerneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PCT_FOLDER = re.compile(r"^\d+(\.\d+)?pct$")
FILE_NAME = re.compile(r"^(?P<stem>.*)_(?P<y>\d+)_(?P<a>\d+)$")
LAYOUT = "<pct>pct/{align,conflict}/<class>/<name>_<y>_<a>.png plus valid/ and test/"


def pct_folder(conflict_ratio: float) -> str:
    """The DFA folder name of a conflict ratio: 0.005 -> '0.5pct', 0.02 -> '2pct'."""
    return f"{round(check_conflict_ratio(conflict_ratio) * 100, 6):g}pct"


def pct_folders(folder: Path) -> list[str]:
    """The `<pct>pct` subfolders of a folder, sorted by their percentage."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and PCT_FOLDER.match(p.name)]
    return sorted(names, key=lambda n: float(n.removesuffix("pct")))


def find_dfa_root(root: str | Path, alias: str) -> Path | None:
    """The folder holding the `<pct>pct` folders: root itself, else root/alias; None if neither does."""
    root = Path(root)
    for folder in (root, root / alias):
        if pct_folders(folder):
            return folder
    return None


def require_root(root: str | Path | None, name: str, expected: str) -> Path:
    """data.root as a Path, or a GerneError saying what the folder must hold."""
    if root is None:
        raise GerneError(f"data.root: {name} reads files; set data.root to a folder holding {expected}")
    folder = Path(root)
    if not folder.is_dir():
        raise GerneError(
            f"data.root: {folder} is not an existing folder; point data.root at a folder holding {expected}"
        )
    return folder


def _images(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, sorted by path; hidden files skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _labels(
    paths: list[Path], name: str, num_classes: int, num_attributes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class and attribute of each file, parsed from `<anything>_<y>_<a>.<suffix>`."""
    y = np.empty(len(paths), dtype=np.int64)
    a = np.empty(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        match = FILE_NAME.match(path.stem)
        if match is None:
            raise GerneError(
                f"data.root: {path} is not named <name>_<y>_<a>{path.suffix} (class y and attribute a as "
                f"numbers), as DFA-style {name} files are; rename or remove it"
            )
        y[i], a[i] = int(match["y"]), int(match["a"])
        if y[i] >= num_classes or a[i] >= num_attributes:
            raise GerneError(
                f"data.root: {path} has class {y[i]} and attribute {a[i]}, but {name} has classes "
                f"0..{num_classes - 1} and attributes 0..{num_attributes - 1}; the file name must end "
                "_<y>_<a>"
            )
    return y, a


def _split_folder(root: Path, pct: str, split: str) -> Path:
    """`<pct>pct/<split>` when it exists, else `<split>` beside the pct folders; error if neither."""
    for folder in (root / pct / split, root / split):
        if folder.is_dir():
            return folder
    raise GerneError(
        f"data.root: no {split}/ folder in {root / pct} or in {root}; DFA-style data needs {LAYOUT} "
        f"({split}/ inside the pct folder or beside it)"
    )


def load_dfa_folders(
    root: str | Path, conflict_ratio: float, name: str, num_classes: int, num_attributes: int,
    transform: str = "none",
) -> GroupedDataset:
    """Read DFA-style folders: train = <pct>pct/{align,conflict}, val = valid/, test = test/, lazily."""
    root = require_root(root, name, f"the DFA-style {name} folders ({LAYOUT})")
    pct = pct_folder(conflict_ratio)
    if not (root / pct).is_dir():
        found = pct_folders(root)
        if not found:
            raise GerneError(f"data.root: {root} holds no DFA-style {name} folders; expected {LAYOUT}")
        raise GerneError(
            f"data.root: {root} has no folder {pct} for data.conflict_ratio={conflict_ratio}; it has "
            f"{', '.join(found)}: set data.conflict_ratio to one of those ratios or add the folder ({LAYOUT})"
        )
    folders = {
        TRAIN: [root / pct / "align", root / pct / "conflict"],
        VAL: [_split_folder(root, pct, "valid")],
        TEST: [_split_folder(root, pct, "test")],
    }
    paths: list[Path] = []
    splits: list[np.ndarray] = []
    for code, where in folders.items():
        found: list[Path] = []
        for folder in where:
            if not folder.is_dir():
                raise GerneError(f"data.root: {folder} is missing; DFA-style {name} data needs {LAYOUT}")
            found += _images(folder)
        if not found:
            raise GerneError(
                f"data.root: no .png or .jpg images in {' or '.join(map(str, where))}; DFA-style "
                f"{name} data needs {LAYOUT}"
            )
        paths += found
        splits.append(np.full(len(found), code, dtype=np.int8))
    y, a = _labels(paths, name, num_classes, num_attributes)
    split = np.concatenate(splits)
    present = np.unique(y[split == TRAIN])
    missing = sorted(set(range(num_classes)) - set(present.tolist()))
    if missing:
        raise GerneError(
            f"data.root: {root / pct}/align and conflict hold no training image of class "
            f"{', '.join(map(str, missing))}; every class 0..{num_classes - 1} needs one (<name>_<y>_<a>.png)"
        )
    return GroupedDataset(
        name=name,
        inputs=ImageFiles(paths, transform, where=f"data.root ({root})"),
        y=y,
        a=a,
        split=split,
        ids=np.arange(len(paths), dtype=np.int64),
        num_classes=num_classes,
        num_attributes=num_attributes,
    )
