"""The grouped dataset every loader returns: inputs, class y, attribute a, split and ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gerne_ray.errors import GerneError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}


@dataclass
class GroupedDataset:
    """In-memory samples with class labels, attribute labels, split codes and stable ids.

    inputs: float32 tensor (N, *input_shape); y, a: int64 arrays (N,) with y in [0, K) and
    a in [0, A); split: int8 array (N,) with 0/1/2 = train/val/test; ids: int64 array (N,).
    """

    name: str
    inputs: torch.Tensor
    y: np.ndarray
    a: np.ndarray
    split: np.ndarray
    ids: np.ndarray
    num_classes: int
    num_attributes: int

    def __post_init__(self) -> None:
        n = len(self.y)
        for field in ("inputs", "a", "split", "ids"):
            if len(getattr(self, field)) != n:
                raise GerneError(
                    f"dataset {self.name}: {field} has {len(getattr(self, field))} rows but y has"
                    f" {n}; every column must have one row per sample"
                )
        if n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise GerneError(f"dataset {self.name}: y must lie in [0, {self.num_classes})")
        if n and (self.a.min() < 0 or self.a.max() >= self.num_attributes):
            raise GerneError(f"dataset {self.name}: a must lie in [0, {self.num_attributes})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.inputs.shape[1:])

    def indices(self, split: int | str) -> np.ndarray:
        """Row indices of one split (0/1/2 or 'train'/'val'/'test')."""
        code = SPLITS[split] if isinstance(split, str) else split
        return np.flatnonzero(self.split == code)
