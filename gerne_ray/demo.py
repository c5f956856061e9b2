"""The offline demo: ERM, resampling and GERNE on colored_digits, side by side."""

from __future__ import annotations

import time

import numpy as np

from gerne_ray.spec import JobSpec, load_spec

# The embedded demo job; jobs/demo.yaml is the same spec as a file (a test keeps them equal).
DEMO_SPEC: dict = {
    "name": "demo",
    "seed": 0,
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp"},
    "method": {"name": "gerne", "c": 0.5, "beta": 1.0},
    "optim": {
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0005,
        "momentum": 0.9,
        "epochs": 60,
        "batch_size_per_class": 16,
    },
    "search": {"metric": "val_gba"},
    "storage": {"path": "runs"},
}
METHODS = ("erm", "resample", "gerne")


def demo_spec() -> JobSpec:
    """The validated demo spec."""
    return load_spec(DEMO_SPEC)


def method_runs(base: JobSpec, methods: tuple[str, ...], seeds: int, storage: str) -> list[JobSpec]:
    """One spec per (method, seed), named <name>-<method>-s<seed>."""
    runs = []
    for method in methods:
        for seed in range(seeds):
            runs.append(load_spec(base, [
                f"name={base.name}-{method}-s{seed}", f"seed={seed}", f"method.name={method}",
                f"storage.path={storage}",
            ]))
    return runs


def run_demo(storage: str = "runs", seeds: int = 3) -> dict[str, list[dict]]:
    """Train every method over `seeds` seeds, print test GBA and WGA side by side, return results."""
    from gerne_ray.training import train

    base = demo_spec()
    print(f"gerne-ray demo: colored_digits, {100 * base.data.conflict_ratio:g}% bias-conflicting, "
          f"{base.model.arch}, {base.optim.epochs} epochs, {seeds} seed(s) per method; "
          f"GERNE with c = {base.method.c}, beta = {base.method.beta}")
    by_method: dict[str, list[dict]] = {m: [] for m in METHODS}
    start = time.perf_counter()
    for spec in method_runs(base, METHODS, seeds, storage):
        result = train(spec)
        by_method[spec.method.name].append(result)
        print(f"  {spec.name:24s} test GBA {100 * result['test_gba']:6.2f}  "
              f"test WGA {100 * result['test_wga']:6.2f}  ({time.perf_counter() - start:.0f} s)")
    print()
    print(f"{'method':10s} {'test GBA':>15s} {'test WGA':>15s} {'val GBA':>15s}")
    for method, rows in by_method.items():
        cells = []
        for key in ("test_gba", "test_wga", "val_gba"):
            values = 100 * np.array([r[key] for r in rows], dtype=float)
            cells.append(f"{values.mean():6.2f} +- {values.std():5.2f}")
        print(f"{method:10s} " + " ".join(f"{c:>15s}" for c in cells))
    print(f"\nGBA: mean of per-group accuracies; WGA: worst group's accuracy; mean +- std over "
          f"{seeds} seed(s). Runs in {storage}/. Total {time.perf_counter() - start:.0f} s.")
    return by_method
