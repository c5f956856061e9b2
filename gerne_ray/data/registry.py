"""Dataset registry: loader functions keyed by the name a job spec uses in `data.dataset`.

The generated datasets load here; the on-disk ones import their module on first use (they pull
in PIL, torchvision or transformers). `load_dataset` passes each loader the `data` options its
signature names (root, conflict_ratio, seed, target, attribute, tokenizer, max_length).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.colored_digits import load_colored_digits
from gerne_ray.data.synthetic import load_synthetic
from gerne_ray.errors import GerneError


def accepted(loader: Callable[..., GroupedDataset], options: dict) -> dict:
    """The options a loader's signature names (all of them for a registry wrapper taking **options)."""
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


def _colored_mnist(**options) -> GroupedDataset:
    from gerne_ray.data.colored_mnist import load_colored_mnist

    return load_colored_mnist(**accepted(load_colored_mnist, options))


def _corrupted_cifar10(**options) -> GroupedDataset:
    from gerne_ray.data.corrupted_cifar10 import load_corrupted_cifar10

    return load_corrupted_cifar10(**accepted(load_corrupted_cifar10, options))


def _bffhq(**options) -> GroupedDataset:
    from gerne_ray.data.bffhq import load_bffhq

    return load_bffhq(**accepted(load_bffhq, options))


def _waterbirds(**options) -> GroupedDataset:
    from gerne_ray.data.waterbirds import load_waterbirds

    return load_waterbirds(**accepted(load_waterbirds, options))


def _celeba(**options) -> GroupedDataset:
    from gerne_ray.data.celeba import load_celeba

    return load_celeba(**accepted(load_celeba, options))


def _civilcomments(**options) -> GroupedDataset:
    from gerne_ray.data.civilcomments import load_civilcomments

    return load_civilcomments(**accepted(load_civilcomments, options))


def _multinli(**options) -> GroupedDataset:
    from gerne_ray.data.multinli import load_multinli

    return load_multinli(**accepted(load_multinli, options))


def _metadata_csv(**options) -> GroupedDataset:
    from gerne_ray.data.metadata_csv import load_metadata_csv

    return load_metadata_csv(**accepted(load_metadata_csv, options))


def _parquet(**options) -> GroupedDataset:
    from gerne_ray.data.parquet import load_parquet

    return load_parquet(**accepted(load_parquet, options))


DATASETS: dict[str, Callable[..., GroupedDataset]] = {
    "synthetic": load_synthetic,
    "colored_digits": load_colored_digits,
    "colored_mnist": _colored_mnist,
    "corrupted_cifar10": _corrupted_cifar10,
    "bffhq": _bffhq,
    "waterbirds": _waterbirds,
    "celeba": _celeba,
    "civilcomments": _civilcomments,
    "multinli": _multinli,
    "metadata_csv": _metadata_csv,
    "parquet": _parquet,
}


def get_loader(name: str) -> Callable[..., GroupedDataset]:
    """Return the loader registered under name, or raise GerneError listing the known names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise GerneError(
            f"data.dataset: unknown dataset {name!r}; use one of: {', '.join(sorted(DATASETS))}"
        ) from None
