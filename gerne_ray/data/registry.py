"""Dataset registry: loader functions keyed by the name a job spec uses in `data.dataset`."""

from __future__ import annotations

from collections.abc import Callable

from gerne_ray.data.base import GroupedDataset
from gerne_ray.data.colored_digits import load_colored_digits
from gerne_ray.data.synthetic import load_synthetic
from gerne_ray.errors import GerneError

DATASETS: dict[str, Callable[..., GroupedDataset]] = {
    "synthetic": load_synthetic,
    "colored_digits": load_colored_digits,
}


def get_loader(name: str) -> Callable[..., GroupedDataset]:
    """Return the loader registered under name, or raise GerneError listing the known names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise GerneError(
            f"data.dataset: unknown dataset {name!r}; use one of: {', '.join(sorted(DATASETS))}"
        ) from None
