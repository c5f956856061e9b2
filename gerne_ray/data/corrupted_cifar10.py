"""Corrupted CIFAR-10: DFA-style folders when data.root has them, else generated from CIFAR-10 (LfF protocol).

Which source (checked in this order):
1. DFA-style folders in data.root or data.root/cifar10c (see `gerne_ray.data.dfa`): read lazily
   as released (32x32 PNGs), the `<pct>pct` folder of data.conflict_ratio.
2. Otherwise CIFAR-10's python release in data.root/cifar-10-batches-py/ (data_batch_1..5 and
   test_batch). When a file is missing the release is downloaded there with torchvision
   (`download_and_extract_archive` with `torchvision.datasets.CIFAR10`'s url and md5: the only
   time anything is downloaded); offline this is one GerneError naming the folder and what it must
   hold. The files are then read here, not by `torchvision.datasets.CIFAR10`, for two reasons:
   that class checks each file's md5 on every load (so a re-saved or subset copy is refused), and
   it unpickles whatever is there. Here a restricted unpickler admits only what a CIFAR batch
   holds (dicts, lists, numbers, bytes and numpy arrays); anything else is refused unexecuted.
   The files' md5 sums are therefore not checked once they exist.

Generation (path 2):
- Splits: train = CIFAR-10's training set less, per class, its last floor(0.1 n_y + 0.5) images
  in file order (5,000 of 50,000), which are the validation split; test = test_batch (10,000).
- Attributes: `assign_attributes` (LfF: per class a share 1 - r of training images gets the
  aligned corruption a = y, the conflicting ones spread over the nine others in blocks; val and
  test uniform over the ten corruptions).
- Corruption a is `CORRUPTIONS[a]`, at Hendrycks & Dietterich's CIFAR-10-C parameters
  (make_cifar_c.py) of `severity` (default 4 of 5), re-implemented with numpy alone (no OpenCV,
  scikit-image, Wand or scipy):
    0 gaussian_noise  x + N(0, 0.09)
    1 shot_noise      Poisson(75 x) / 75
    2 impulse_noise   salt and pepper, amount 0.05 (each value independently; half salt)
    3 speckle_noise   x + x N(0, 0.16)
    4 gaussian_blur   Gaussian, sigma 0.8, truncated at 4 sigma, edge pixels repeated
    5 defocus_blur    disk of radius 1 (17x17 grid) smoothed by a 3x3 Gaussian of sigma 0.2,
                      borders reflected (OpenCV's default)
    6 contrast        (x - m) 0.3 + m, m the image's per-channel mean
    7 brightness      HSV value + 0.2
    8 saturate        HSV saturation * 2 + 0.1
    9 pixelate        PIL's BOX resampling to 24x24 and back to 32x32
  The first six follow LfF's Corrupted CIFAR-10 type 1 order; the rest come from its type 0 (its
  snow, frost, fog, spatter, elastic, JPEG, glass, motion and zoom blur need native libraries or
  image assets). Differences from the reference: brightness and saturate change V or S through
  the exact HSV identities instead of a round trip through scikit-image (same result up to
  float rounding); pixelate and all the others compute in float32 without PIL's intermediate
  rounding to uint8; values are clipped to [0, 1] and stored as uint8 rounded half up (the
  reference truncates).
- Randomness: `numpy.random.SeedSequence(seed).spawn(2)` gives the attribute stream and one seed
  per corruption (each corruption's images are processed in row order, CHUNK at a time).
- Inputs: uint8 (60000, 3, 32, 32), 184 MB in memory, scaled to [0, 1] when batched. Nothing is
  cached on disk. Rows: CIFAR train in file order, then test; ids = row index.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gerne_ray.data.base import TEST, GroupedDataset
from gerne_ray.data.colored_digits import assign_attributes, check_conflict_ratio
from gerne_ray.data.colored_mnist import (
    DOWNLOAD_ERRORS,
    VAL_FRACTION,
    download_failed,
    generated_dataset,
    holdout_split,
    to_uint8,
)
from gerne_ray.data.dfa import LAYOUT, find_dfa_root, load_dfa_folders, require_root
from gerne_ray.errors import GerneError

NAME = "corrupted_cifar10"
NUM_CLASSES = 10
DFA_ALIAS = "cifar10c"
BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
SEVERITY = 4
CHUNK = 2048

# Hendrycks & Dietterich's CIFAR-10-C parameters, severities 1..5
PARAMETERS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
CORRUPTIONS = tuple(PARAMETERS)


# ---- corruptions: float32 images (n, 3, H, W) in [0, 1] -> corrupted, not yet clipped ----

def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, c, x.shape).astype(np.float32)


def _shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(x.astype(np.float64) * c) / c).astype(np.float32)


def _impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _speckle_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(0.0, c, x.shape).astype(np.float32)


def _correlate(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Each channel correlated with a 2-D kernel (odd sides), borders padded by np.pad's mode."""
    rh, rw = kernel.shape[0] // 2, kernel.shape[1] // 2
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (rh, rh), (rw, rw)), mode=mode)
    out = np.zeros_like(x)
    for i, j in zip(*np.nonzero(kernel), strict=True):
        out += np.float32(kernel[i, j]) * padded[:, :, i:i + h, j:j + w]
    return out


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """A normalised 1-D Gaussian of 2 radius + 1 taps (float64)."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    k = gaussian_kernel(sigma, int(4.0 * sigma + 0.5))  # scipy.ndimage's truncate=4.0, mode 'nearest'
    return _correlate(_correlate(x, k[:, None], "edge"), k[None, :], "edge")


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Hendrycks' defocus disk: the aliased disk on a 17x17 grid, normalised, smoothed by a 3x3 Gaussian."""
    grid = np.arange(-8, 9, dtype=np.float64)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = gaussian_kernel(alias_blur, 1)
    padded = np.pad(disk, 1)  # the disk is 0 near the grid's edge, so the border mode does not matter
    smooth = sum(g[i] * padded[i:i + 17, 1:-1] for i in range(3))
    padded = np.pad(smooth, 1)
    smooth = sum(g[j] * padded[1:-1, j:j + 17] for j in range(3))
    rows, cols = np.nonzero(smooth)
    return smooth[rows.min():rows.max() + 1, cols.min():cols.max() + 1]  # same result, fewer taps


def _defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    return _correlate(x, disk_kernel(*c), "reflect")  # numpy's reflect is OpenCV's BORDER_REFLECT_101


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(2, 3), keepdims=True)
    return (x - means) * np.float32(c) + means


def _brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    # HSV value + c with H, S kept: every channel scales by v'/v (black becomes grey v')
    v = x.max(axis=1, keepdims=True)
    v_new = np.clip(v + np.float32(c), 0.0, 1.0)
    return np.where(v > 0, x * (v_new / np.where(v > 0, v, 1.0)), v_new)


def _saturate(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    # HSV saturation s -> s' with H, V kept: channel = v - (s'/s)(v - channel); grey (s = 0, hue 0) -> red
    v = x.max(axis=1, keepdims=True)
    spread = v - x.min(axis=1, keepdims=True)
    s = np.where(v > 0, spread / np.where(v > 0, v, 1.0), 0.0)
    s_new = np.clip(s * np.float32(c[0]) + np.float32(c[1]), 0.0, 1.0)
    coloured = v - (s_new / np.where(s > 0, s, 1.0)) * (v - x)
    grey = np.concatenate([v, v * (1 - s_new), v * (1 - s_new)], axis=1)
    return np.where(s > 0, coloured, grey).astype(np.float32)


def box_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL's BOX resampling of one axis from n_in to n_out pixels as an (n_out, n_in) matrix."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), n_in)
        for i in range(low, high):
            t = (i - centre + 0.5) / filterscale
            weights[o, i] = 1.0 if -0.5 <= t < 0.5 else 0.0
        weights[o] /= weights[o].sum()
    return weights


def _pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[2:]
    small_h, small_w = int(h * c), int(w * c)
    down_h, down_w = box_weights(h, small_h).astype(np.float32), box_weights(w, small_w).astype(np.float32)
    up_h, up_w = box_weights(small_h, h).astype(np.float32), box_weights(small_w, w).astype(np.float32)
    return up_h @ (down_h @ x @ down_w.T) @ up_w.T


FUNCTIONS: dict[str, Callable[[np.ndarray, object, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "saturate": _saturate,
    "pixelate": _pixelate,
}


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (n, 3, H, W) with one named corruption at a severity 1..5 applied: uint8 again."""
    if name not in FUNCTIONS:
        raise GerneError(f"unknown corruption {name!r}; use one of: {', '.join(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise GerneError(f"corruption severity must be 1..5, got {severity!r}")
    x = images.astype(np.float32) / np.float32(255.0)
    return to_uint8(FUNCTIONS[name](x, PARAMETERS[name][severity - 1], rng))


# ---- reading CIFAR-10 ----

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a CIFAR batch file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch") from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file: images uint8 (n, 3, 32, 32) and labels int64 (n,)."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"])
        labels = np.asarray(entry["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.shape[1:] != (3 * 32 * 32,) or len(labels) != len(data):
            raise ValueError("expected 'data' uint8 (n, 3072) and n 'labels'")
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as err:
        raise GerneError(
            f"data.root: {path} is not a CIFAR-10 python batch file ({download_failed(err)}); replace it "
            f"with the file of that name from cifar-10-python.tar.gz"
        ) from None
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise GerneError(f"data.root: the labels in {path} must be 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10's train and test images (n, 3, 32, 32) uint8 and labels; downloads the release if missing."""
    folder = root / BATCH_FOLDER
    files = (*TRAIN_FILES, TEST_FILE)
    if not all((folder / f).is_file() for f in files):
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(
                CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
            )
        except DOWNLOAD_ERRORS as err:
            raise GerneError(
                f"data.root: {root} holds neither DFA-style Corrupted CIFAR-10 folders ({LAYOUT}, in it or "
                f"in {root / DFA_ALIAS}) nor CIFAR-10's python release ({folder}/{{{','.join(files)}}}), "
                f"and downloading CIFAR-10 there failed ({download_failed(err)}); download and extract "
                f"{CIFAR10.url} into data.root where there is internet, or copy the DFA folders there"
            ) from None
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise GerneError(f"data.root: the CIFAR-10 download lacks {', '.join(missing)} in {folder}")
    train = [read_batch(folder / f) for f in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y


def load_corrupted_cifar10(
    root: str | None, conflict_ratio: float = 0.02, seed: int = 0, severity: int = SEVERITY
) -> GroupedDataset:
    """Load Corrupted CIFAR-10: DFA-style folders in root, else CIFAR-10 with 10 corruptions (K = A = 10)."""
    r = check_conflict_ratio(conflict_ratio)
    root_dir = require_root(
        root, NAME,
        f"DFA-style Corrupted CIFAR-10 folders ({LAYOUT}) or CIFAR-10's python release ({BATCH_FOLDER}/)",
    )
    dfa = find_dfa_root(root_dir, DFA_ALIAS)
    if dfa is not None:
        return load_dfa_folders(dfa, r, NAME, NUM_CLASSES, NUM_CLASSES, "none")
    if severity not in (1, 2, 3, 4, 5):
        raise GerneError(f"corrupted_cifar10: severity must be 1..5, got {severity!r}")
    train_x, train_y, test_x, test_y = _cifar10(root_dir)
    images = np.concatenate([train_x, test_x])
    y = np.concatenate([train_y, test_y])
    split = np.concatenate([holdout_split(train_y, VAL_FRACTION), np.full(len(test_y), TEST, dtype=np.int8)])
    attribute_seed, corruption_seed = np.random.SeedSequence(seed).spawn(2)
    a = assign_attributes(y, split, NUM_CLASSES, r, np.random.default_rng(attribute_seed))
    inputs = np.empty_like(images)
    for k, (name, child) in enumerate(zip(CORRUPTIONS, corruption_seed.spawn(len(CORRUPTIONS)), strict=True)):
        rng = np.random.default_rng(child)
        rows = np.flatnonzero(a == k)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            inputs[chunk] = corrupt(images[chunk], name, severity, rng)
    return generated_dataset(NAME, inputs, y, a, split, NUM_CLASSES)
