"""Colored MNIST: DFA-style folders when data.root has them, else generated from MNIST by the LfF protocol.

Which source (checked in this order):
1. DFA-style folders in data.root or data.root/cmnist (see `gerne_ray.data.dfa`): read lazily as
   released, 28x28 RGB images, the `<pct>pct` folder of data.conflict_ratio.
2. Otherwise MNIST through torchvision: `torchvision.datasets.MNIST(data.root, download=True)`,
   which reads data.root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte and downloads them
   there when missing (the only time anything is downloaded). Offline without those files this is
   one GerneError naming the folder and what it must hold.

Generation (path 2), by the LfF protocol as `gerne_ray.data.colored_digits` does it:
- Splits: train = MNIST's training set less, per class, its last floor(0.1 n_y + 0.5) images in
  file order (`VAL_FRACTION`), which are the validation split (6,000 of 60,000); test = MNIST's
  test set (10,000). The split does not depend on the seed.
- Attributes: `assign_attributes` (exact counts: per class a share 1 - r of training images gets
  the aligned colour a = y, the conflicting ones spread over the nine others in blocks; val and
  test colour-uniform).
- Colours: `PALETTE[a]` plus Gaussian jitter of std `JITTER` (one draw per image and channel), times
  the digit's intensity (pixel / 255), clipped to [0, 1] (`lff_colours`, `colorize`), then stored as
  uint8 (`to_uint8`: x * 255 rounded half up): inputs (70000, 3, 28, 28), 165 MB in memory,
  scaled back to [0, 1] when batched. Nothing is cached on disk.
- Randomness: `numpy.random.SeedSequence(seed).spawn(2)` gives the attribute and jitter streams.
- Rows: MNIST train in file order, then MNIST test; ids = row index (test image i has id 60000 + i).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.data.colored_digits import PALETTE, assign_attributes, check_conflict_ratio, round_half_up
from gerne_ray.data.dfa import LAYOUT, find_dfa_root, load_dfa_folders, require_root
from gerne_ray.errors import GerneError

NAME = "colored_mnist"
NUM_CLASSES = 10
DFA_ALIAS = "cmnist"
VAL_FRACTION = 0.1
JITTER = 0.05
CHUNK = 4096  # images coloured at a time, to bound the float32 working memory
MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
DOWNLOAD_ERRORS = (OSError, RuntimeError, ValueError, TypeError, EOFError)
# torchvision checks an idx file's header with assert statements
MNIST_ERRORS = (*DOWNLOAD_ERRORS, AssertionError, KeyError, IndexError)



def generated_dataset(name: str, inputs: np.ndarray, y: np.ndarray, a: np.ndarray, split: np.ndarray,
                      num_classes: int = 10) -> GroupedDataset:
    """A generated K x K dataset (attribute k aligned with class k) of uint8 images in memory."""
    return GroupedDataset(
        name=name, inputs=torch.from_numpy(inputs), y=y, a=a, split=split,
        ids=np.arange(len(y), dtype=np.int64), num_classes=num_classes, num_attributes=num_classes,
    )

def lff_colours(a: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Each sample's colour: PALETTE[a] plus N(0, jitter) per channel, float32 (N, 3)."""
    return PALETTE[a] + rng.normal(0.0, jitter, size=(len(a), 3)).astype(np.float32)


def colorize(intensity: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Grey images (N, H, W) in [0, 1] times their colours (N, 3), clipped: float32 (N, 3, H, W)."""
    return np.clip(intensity[:, None, :, :] * colours[:, :, None, None], 0.0, 1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as uint8 0..255, x * 255 rounded half up."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def holdout_split(y: np.ndarray, val_fraction: float) -> np.ndarray:
    """Split codes (int8): per class, the last floor(val_fraction * n_y + 0.5) samples VAL, the rest TRAIN."""
    y = np.asarray(y)
    split = np.full(len(y), TRAIN, dtype=np.int8)
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        n_val = round_half_up(val_fraction * len(rows))
        if n_val:
            split[rows[len(rows) - n_val:]] = VAL
    return split


def download_failed(err: BaseException) -> str:
    """An exception as one short line for an error message."""
    return (" ".join(str(err).split()) or type(err).__name__)[:300]


def _mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST's train and test images (N, 28, 28) uint8 and labels, via torchvision (downloads if missing)."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    had_files = all((raw / f).is_file() for f in MNIST_FILES)
    try:
        train = MNIST(str(root), train=True, download=True)
        test = MNIST(str(root), train=False, download=True)
    except MNIST_ERRORS as err:
        if had_files:
            raise GerneError(
                f"data.root: the MNIST files in {raw} are unreadable ({download_failed(err)}); replace them "
                f"with MNIST's {', '.join(MNIST_FILES)}"
            ) from None
        raise GerneError(
            f"data.root: {root} holds neither DFA-style Colored MNIST folders ({LAYOUT}, in it or in "
            f"{root / DFA_ALIAS}) nor MNIST's raw files ({raw}/{{{','.join(MNIST_FILES)}}}), and "
            f"downloading MNIST there failed ({download_failed(err)}); run "
            "torchvision.datasets.MNIST(<folder>, download=True) where there is internet and copy the "
            "MNIST folder into data.root, or copy the DFA folders there"
        ) from None
    data = [np.asarray(d.data.numpy(), dtype=np.uint8) for d in (train, test)]
    labels = [np.asarray(d.targets.numpy(), dtype=np.int64) for d in (train, test)]
    for arr in labels:
        if len(arr) and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
            raise GerneError(f"data.root: the MNIST labels in {raw} must be digits 0..9")
    return data[0], labels[0], data[1], labels[1]


def load_colored_mnist(root: str | None, conflict_ratio: float = 0.02, seed: int = 0) -> GroupedDataset:
    """Load Colored MNIST: DFA-style folders in root, else MNIST coloured by the LfF protocol (K = A = 10)."""
    r = check_conflict_ratio(conflict_ratio)
    root_dir = require_root(
        root, NAME, f"DFA-style Colored MNIST folders ({LAYOUT}) or MNIST's raw files (MNIST/raw/)"
    )
    dfa = find_dfa_root(root_dir, DFA_ALIAS)
    if dfa is not None:
        return load_dfa_folders(dfa, r, NAME, NUM_CLASSES, NUM_CLASSES, "none")
    train_x, train_y, test_x, test_y = _mnist(root_dir)
    images = np.concatenate([train_x, test_x])
    y = np.concatenate([train_y, test_y])
    split = np.concatenate([holdout_split(train_y, VAL_FRACTION), np.full(len(test_y), TEST, dtype=np.int8)])
    attribute_rng, jitter_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    a = assign_attributes(y, split, NUM_CLASSES, r, attribute_rng)
    colours = lff_colours(a, JITTER, jitter_rng)
    inputs = np.empty((len(y), 3, *images.shape[1:]), dtype=np.uint8)
    for start in range(0, len(y), CHUNK):
        rows = slice(start, start + CHUNK)
        inputs[rows] = to_uint8(colorize(images[rows].astype(np.float32) / 255.0, colours[rows]))
    return generated_dataset(NAME, inputs, y, a, split)
