"""The grouped dataset every loader returns: inputs, class y, attribute a, split and ids.

Inputs are either a tensor in memory (generated and small datasets; uint8 images are scaled to
[0, 1] when a batch is taken) or a `Source`: samples read one at a time (image files, text),
which `GroupedDataset.batches` reads through a torch DataLoader with `data.num_workers` worker
processes. Either way the training loop asks for the rows of each batch and gets a tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gerne_ray.errors import GerneError

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}


class Source(torch.utils.data.Dataset):
    """Samples read lazily, one at a time (a file, a text): what a DataLoader's workers call.

    Subclasses set `input_shape` (one sample's tensor shape) and implement __len__ and
    __getitem__(i) -> tensor; they must pickle (they travel to DataLoader and Ray workers).
    """

    input_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:
        raise NotImplementedError


class _Batches(torch.utils.data.Sampler):
    """A DataLoader batch_sampler over given arrays of row indices, in order."""

    def __init__(self, rows: Iterable[np.ndarray]) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[list[int]]:
        return (np.asarray(r).tolist() for r in self.rows)


def as_model_input(x: torch.Tensor) -> torch.Tensor:
    """A batch as the model takes it: uint8 images scaled to float32 in [0, 1], others as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@dataclass
class GroupedDataset:
    """Samples with class labels, attribute labels, split codes and stable ids.

    inputs: a tensor (N, *input_shape) (float32, or uint8 images scaled when batched) or a Source
    of N samples; y, a: int64 arrays (N,) with y in [0, K) and a in [0, A); split: int8 array (N,)
    with 0/1/2 = train/val/test; ids: int64 array (N,).
    """

    name: str
    inputs: torch.Tensor | Source
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
        if isinstance(self.inputs, Source):
            return tuple(self.inputs.input_shape)
        return tuple(self.inputs.shape[1:])

    def batches(self, rows: Iterable[np.ndarray], num_workers: int = 0) -> Iterator[torch.Tensor]:
        """The input tensor of each array of row indices, in order.

        In-memory inputs are indexed directly; a Source is read by a DataLoader with num_workers
        worker processes (0: in this process), which reads ahead while the model trains.
        """
        if not isinstance(self.inputs, Source):
            for r in rows:
                yield as_model_input(self.inputs[torch.as_tensor(r)])
            return
        loader = torch.utils.data.DataLoader(
            self.inputs, batch_sampler=_Batches(rows), num_workers=num_workers,
            prefetch_factor=2 if num_workers else None, persistent_workers=False,
        )
        for x in loader:
            yield as_model_input(x)

    def indices(self, split: int | str) -> np.ndarray:
        """Row indices of one split (0/1/2 or 'train'/'val'/'test')."""
        code = SPLITS[split] if isinstance(split, str) else split
        return np.flatnonzero(self.split == code)
