"""Training methods as plug-ins: one module per method, registered here by name.

Adding a method: write `gerne_ray/methods/<name>.py` with a `Method` subclass (gerne_ray.methods.base
says what it owns) and add one line to BUILTIN below, or call `register(MyMethod)` from your own code.
Modules load on first use, so listing a method costs nothing until a spec names it.
"""

from __future__ import annotations

import importlib

from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams

# name -> "module:Class"
BUILTIN: dict[str, str] = {
    "erm": "gerne_ray.methods.erm:ERM",
    "resample": "gerne_ray.methods.resample:Resample",
    "reweight": "gerne_ray.methods.reweight:Reweight",
    "gerne": "gerne_ray.methods.gerne:GERNE",
    "groupdro": "gerne_ray.methods.groupdro:GroupDRO",
    "jtt": "gerne_ray.methods.jtt:JTT",
    "lff": "gerne_ray.methods.lff:LfF",
    "dfr": "gerne_ray.methods.dfr:DFR",
}
_loaded: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Register a method class under cls.name (usable as a decorator); a name is taken once."""
    name = cls.name
    if name in _loaded and _loaded[name] is not cls:
        raise GerneError(f"method {name!r} is registered already; choose another name")
    if name in BUILTIN and BUILTIN[name] != f"{cls.__module__}:{cls.__qualname__}":
        raise GerneError(f"method {name!r} is a built-in method; choose another name")
    params_name = cls.Params.model_fields["name"].default
    if params_name != name:
        raise GerneError(f"method {name!r}: its Params must default name to {name!r} (got {params_name!r})")
    _loaded[name] = cls
    return cls


def names() -> list[str]:
    """Every registered method's name (built-in first, in their order)."""
    return list(dict.fromkeys([*BUILTIN, *_loaded]))


def get(name: str) -> type[Method]:
    """The method class registered as name."""
    if name not in _loaded:
        if name not in BUILTIN:
            raise GerneError(f"method.name: unknown method {name!r}; use one of: {', '.join(names())}")
        module, _, attr = BUILTIN[name].partition(":")
        _loaded[name] = getattr(importlib.import_module(module), attr)
    return _loaded[name]


def params_class(name: str) -> type[MethodParams]:
    """The pydantic model of a method's hyperparameters."""
    return get(name).Params


__all__ = ["Batch", "Method", "MethodParams", "BUILTIN", "get", "names", "params_class", "register"]
