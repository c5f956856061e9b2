"""Datasets: one module per family, a registry by name, and `load_dataset` for a spec."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gerne_ray.data.base import TEST, TRAIN, VAL, GroupedDataset
from gerne_ray.errors import GerneError

if TYPE_CHECKING:
    from gerne_ray.spec import DataSpec

__all__ = ["GroupedDataset", "TRAIN", "VAL", "TEST", "load_dataset"]


def load_dataset(data: DataSpec) -> GroupedDataset:
    """The dataset a `data` spec names, built by its registered loader."""
    from gerne_ray.data.registry import accepted, check_columns, get_loader

    if data.root is not None and not Path(data.root).exists():
        raise GerneError(
            f"data.root: {data.root} does not exist; point data.root at the dataset's folder (or, for "
            "parquet, its manifest file), or remove data.root (generated datasets read no files)"
        )
    loader = get_loader(data.dataset)
    offered = {
        "root": data.root, "conflict_ratio": data.conflict_ratio, "seed": data.seed, "target": data.target,
        "attribute": data.attribute, "tokenizer": data.tokenizer, "max_length": data.max_length,
    }
    check_columns(data.dataset, loader, offered)
    return loader(**accepted(loader, offered))
