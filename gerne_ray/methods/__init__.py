"""Training methods as plug-ins: one module per method, registered here by name.

Adding a method: write `gerne_ray/methods/<name>.py` with a `Method` subclass (gerne_ray.methods.base
says what it owns) and add it to the registry below (its name in BUILTIN, its class in `_builtin`),
or call `register(MyMethod)` from your own code. Modules load on first use.
"""

from __future__ import annotations

from gerne_ray.errors import GerneError
from gerne_ray.methods.base import Batch, Method, MethodParams

# The built-in methods, by name; `_builtin` imports them on first use (they pull in torch).
BUILTIN = ("erm", "resample", "reweight", "gerne", "groupdro", "jtt", "lff", "dfr")
_loaded: dict[str, type[Method]] = {}


def _builtin() -> dict[str, type[Method]]:
    """The built-in method classes (imported here, never by a name read from a spec)."""
    from gerne_ray.methods import dfr, erm, gerne, groupdro, jtt, lff, resample, reweight

    return {cls.name: cls for cls in (erm.ERM, resample.Resample, reweight.Reweight, gerne.GERNE,
                                       groupdro.GroupDRO, jtt.JTT, lff.LfF, dfr.DFR)}


def register(cls: type[Method]) -> type[Method]:
    """Register a method class under cls.name (usable as a decorator); a name is taken once."""
    name = cls.name
    if name in BUILTIN and _builtin()[name] is not cls:
        raise GerneError(f"method {name!r} is a built-in method; choose another name")
    if name in _loaded and _loaded[name] is not cls:
        raise GerneError(f"method {name!r} is registered already; choose another name")
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
        _loaded.update({k: v for k, v in _builtin().items() if k not in _loaded})
    return _loaded[name]


def params_class(name: str) -> type[MethodParams]:
    """The pydantic model of a method's hyperparameters."""
    return get(name).Params


__all__ = ["Batch", "Method", "MethodParams", "BUILTIN", "get", "names", "params_class", "register"]
