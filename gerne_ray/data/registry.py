"""Dataset registry: loader functions keyed by the name a job spec uses in `data.dataset`.

The generated datasets load here; the on-disk ones import their module on first use (they pull
in PIL, torchvision or transformers). `load_dataset` passes each loader the `data` options its
signature names (root, conflict_ratio, seed, target, attribute, tokenizer, max_length).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.colored_digits import load_colored_digits
from gerne_ray.data.synthetic import load_synthetic
from gerne_ray.errors import GerneError


def check_columns(name: str, loader: Callable[..., GroupedDataset], options: dict) -> None:
    """Refuse data.target / data.attribute for a dataset whose classes and attributes are fixed."""
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a lazy on-disk entry: checked against the real loader when it is imported
    for key in ("target", "attribute"):
        if options.get(key) is not None and key not in params:
            raise GerneError(
                f"data.{key}: the dataset {name} has fixed classes and attributes and takes no {key}; "
                f"remove data.{key} (it chooses columns for celeba and parquet)"
            )


def accepted(loader: Callable[..., GroupedDataset], options: dict) -> dict:
    """The options a loader's signature names (all of them for a registry wrapper taking **options)."""
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


def _on_disk(name: str, **options) -> GroupedDataset:
    """Import an on-disk dataset's loader on first use and call it with the options it names."""
    if name == "colored_mnist":
        from gerne_ray.data.colored_mnist import load_colored_mnist as loader
    elif name == "corrupted_cifar10":
        from gerne_ray.data.corrupted_cifar10 import load_corrupted_cifar10 as loader
    elif name == "bffhq":
        from gerne_ray.data.bffhq import load_bffhq as loader
    elif name == "waterbirds":
        from gerne_ray.data.waterbirds import load_waterbirds as loader
    elif name == "celeba":
        from gerne_ray.data.celeba import load_celeba as loader
    elif name == "civilcomments":
        from gerne_ray.data.civilcomments import load_civilcomments as loader
    elif name == "multinli":
        from gerne_ray.data.multinli import load_multinli as loader
    elif name == "metadata_csv":
        from gerne_ray.data.metadata_csv import load_metadata_csv as loader
    else:
        from gerne_ray.data.parquet import load_parquet as loader
    check_columns(name, loader, options)
    return loader(**accepted(loader, options))


ON_DISK = ("colored_mnist", "corrupted_cifar10", "bffhq", "waterbirds", "celeba", "civilcomments", "multinli",
           "metadata_csv", "parquet")

DATASETS: dict[str, Callable[..., GroupedDataset]] = {
    "synthetic": load_synthetic,
    "colored_digits": load_colored_digits,
    **{name: functools.partial(_on_disk, name) for name in ON_DISK},
}


def get_loader(name: str) -> Callable[..., GroupedDataset]:
    """Return the loader registered under name, or raise GerneError listing the known names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise GerneError(
            f"data.dataset: unknown dataset {name!r}; use one of: {', '.join(sorted(DATASETS))}"
        ) from None
