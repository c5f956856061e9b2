"""gerne-ray: GERNE (gradient extrapolation for debiased representation learning) on Ray.

Python API: `gerne_ray.train(spec)` runs one configuration; `gerne_ray.tune(spec)` searches beta
(and c, lr, weight decay) with Ray Tune + Optuna; `gerne_ray.resume(run_dir)` continues a search;
`gerne_ray.compare(spec, methods)` searches several methods with the same budget and tabulates them;
`gerne_ray.load_spec(spec)` validates a spec; `gerne_ray.methods` is the registry of methods.
Specs are paths, dicts or JobSpec objects.
"""

from __future__ import annotations

from typing import Any

from gerne_ray.errors import GerneError
from gerne_ray.spec import JobSpec, load_spec

__all__ = ["GerneError", "JobSpec", "compare", "load_spec", "resume", "train", "tune"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "train":  # imported on first use: it pulls in torch
        from gerne_ray.training import train

        return train
    if name in ("tune", "resume"):  # and Ray
        from gerne_ray import tuning

        return getattr(tuning, name)
    if name == "compare":
        from gerne_ray.compare import compare

        return compare
    raise AttributeError(f"module 'gerne_ray' has no attribute {name!r}")
