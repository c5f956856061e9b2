"""gerne-ray: GERNE (gradient extrapolation for debiased representation learning) on Ray.

Python API: `gerne_ray.train(spec)` runs one configuration; `gerne_ray.load_spec(spec)` validates
a spec given as a path, a dict or a JobSpec.
"""

from __future__ import annotations

from typing import Any

from gerne_ray.errors import GerneError
from gerne_ray.spec import JobSpec, load_spec

__all__ = ["GerneError", "JobSpec", "load_spec", "train"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "train":  # imported on first use: it pulls in torch
        from gerne_ray.training import train

        return train
    raise AttributeError(f"module 'gerne_ray' has no attribute {name!r}")
